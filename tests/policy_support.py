"""What the policy tests share: a model with two distinguishable versions, config for a
watched policy directory, atomic policy edits, and one predict call that reports what served."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from aiohttp.test_utils import TestClient

from tests.conftest import put_model
from tests.onnx_models import scaled_demo_bytes

#: `ab` v1 and v2 take the demo's input and answer differently; labels stable=1, canary=2.
AB_MODEL = """
[models.ab]
adapter = "local"
version_policy = "all"
labels = { stable = 1, canary = 2 }
"""
ROW = [1.0, 2.0, 3.0, 4.0]


def add_ab_model(repo: Path) -> None:
    put_model(repo, "ab", 1, scaled_demo_bytes(1.0))
    put_model(repo, "ab", 2, scaled_demo_bytes(0.5))


def policies_section(directory: Path, poll_interval_s: float = 0.05, extra: str = "") -> str:
    return (f'\n[policies]\ndirectory = "{directory}"\npoll_interval_s = {poll_interval_s}\n'
            f"{extra}\n")


def write_policy(path: Path, text: str) -> None:
    """As an editor saves: a new file renamed over the old one, never seen half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def split_policy(weight_a: float = 50, weight_b: float = 50, name: str = "ab-test") -> str:
    """`ab`: variant a is v1, b is v2, sticky by x-user-id, x-experiment overrides."""
    return f"""
[[routes]]
name = "{name}"
model = "ab"
sticky = "header:x-user-id"
override = "header:x-experiment"

[[routes.variants]]
variant = "a"
weight = {weight_a}
adapter = "local"
version = 1

[[routes.variants]]
variant = "b"
weight = {weight_b}
adapter = "local"
label = "canary"
"""


def pinned_policy(version: int) -> str:
    """`ab` to one version, echoed as variant `v<version>`."""
    return f"""
[[routes]]
name = "pinned"
model = "ab"
target = {{ adapter = "local", version = {version}, variant = "v{version}" }}
"""


def v2_body(rows: int = 1) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4],
                        "data": ROW * rows}]}


@dataclass(frozen=True)
class Served:
    status: int
    variant: str | None
    version: str | None
    body: dict[str, object]


async def predict(client: TestClient, model: str = "ab",
                  headers: dict[str, str] | None = None) -> Served:
    reply = await client.post(f"/v2/models/{model}/infer", json=v2_body(), headers=headers)
    body = await reply.json()
    return Served(reply.status, reply.headers.get("x-gateway-variant"),
                  body.get("model_version"), body)
