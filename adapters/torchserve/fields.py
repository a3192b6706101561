"""A form or multipart body as the named inputs TorchServe's REST API hands a handler (one per
field, `{"a": b"1", "file": b"..."}`), for its gRPC API, which takes named inputs but parses no
body; any other body is the one input `body`, as REST names it."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl

from gateway.errors import BadRequest

BODY = "body"


def inputs(body: bytes, content_type: str) -> dict[str, bytes]:
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        # latin-1 maps bytes to characters one to one: the values' bytes come back as sent
        return {k.encode("latin-1").decode("utf-8", "replace"): v.encode("latin-1")
                for k, v in parse_qsl(body.decode("latin-1"), encoding="latin-1")}
    if media == "multipart/form-data":
        return _multipart(body, content_type)
    return {BODY: body}


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise BadRequest("malformed multipart/form-data body")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = _payload(part)
    return fields


def _payload(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""
