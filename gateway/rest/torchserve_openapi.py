"""What the TorchServe door serves, in OpenAPI 3.0.1 (TorchServe answers `OPTIONS /` and
`/api-description` with its own): the inference paths and `/ping`, not TorchServe's management
API, which the gateway does not serve on this door."""

from __future__ import annotations

from typing import Any

from gateway.codecs import jsonio

_ERROR = {"type": "object", "required": ["code", "type", "message"],
          "properties": {"code": {"type": "integer"}, "type": {"type": "string"},
                         "message": {"type": "string"}}}
_FAILED = {"description": "TorchServe's error shape",
           "content": {"application/json": {"schema": _ERROR}}}


def _param(name: str) -> dict[str, Any]:
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}


def _inference(what: str, versioned: bool) -> dict[str, Any]:
    operation = {
        "description": f"The model's {what}: the body goes to its handler (a TorchServe "
                       "backend) or, as a JSON object of inputs, to any other backend.",
        "parameters": [_param("model_name"), *([_param("model_version")] if versioned else [])],
        "requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": {"description": "The handler's reply, as it answered it",
                              "content": {"*/*": {"schema": {"type": "string",
                                                             "format": "binary"}}}},
                      "4XX": _FAILED, "5XX": _FAILED}}
    return {method: operation for method in ("post", "put", "get")}


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/": {"options": {"description": "This description.",
                          "responses": {"200": {"description": "OpenAPI 3.0.1"}}}},
        "/api-description": {"get": {"description": "This description.",
                                     "responses": {"200": {"description": "OpenAPI 3.0.1"}}}},
        "/ping": {"get": {"description": "The gateway's readiness, as TorchServe's health.",
                          "responses": {"200": {"description": '{"status": "Healthy"}'},
                                        "500": {"description": '{"status": "Unhealthy"}'}}}}}
    for kind, what in (("predictions", "prediction"), ("explanations", "explanation")):
        paths[f"/{kind}/{{model_name}}"] = _inference(what, False)
        paths[f"/{kind}/{{model_name}}/{{model_version}}"] = _inference(what, True)
    return paths


DOCUMENT = jsonio.dumps({
    "openapi": "3.0.1",
    "info": {"title": "Inference gateway: TorchServe inference API",
             "description": "TorchServe's inference API in front of every backend the "
                            "gateway routes to", "version": "1"},
    "paths": _paths()})
