"""`kind = "onnx"`: models served in-process by ONNX Runtime from a TF Serving-style
repository, with the gateway's dynamic batching."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.model_config import BatchingConfig, parse_batching
from gateway.tomlconfig import Table, keys_of


@dataclass(frozen=True)
class OnnxAdapterConfig:
    name: str
    repository: Path
    poll_interval_s: float = 2.0
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    # A model is first loaded and warmed up in a child process within these bounds.
    load_timeout_s: float = 60.0
    load_memory_bytes: int = 2 * 1024**3
    load_concurrency: int = 2  # models checked and loaded at once
    run_memory_bytes: int = 2 * 1024**3  # ONNX Runtime's arena per model version; 0: no cap
    kind: str = "onnx"


def parse(name: str, t: Table, base_dir: Path) -> OnnxAdapterConfig:
    t.expect(keys_of(OnnxAdapterConfig, without=("name",)))
    repository = Path(t.text("repository"))
    if not repository.is_absolute():
        repository = base_dir / repository
    # A typo here would serve no models and only show as 404s; an empty directory is fine.
    if not repository.is_dir():
        raise t.error("repository", f"{repository} is not a directory (create it, even empty "
                      "if models will only be uploaded)")
    d = OnnxAdapterConfig(name=name, repository=repository)
    return OnnxAdapterConfig(
        name=name,
        repository=repository,
        poll_interval_s=t.number("poll_interval_s", d.poll_interval_s, minimum=0.05),
        intra_op_threads=t.integer("intra_op_threads", d.intra_op_threads, minimum=0),
        inter_op_threads=t.integer("inter_op_threads", d.inter_op_threads, minimum=0),
        batching=parse_batching(t.table("batching"), d.batching),
        load_timeout_s=t.number("load_timeout_s", d.load_timeout_s, minimum=0.1),
        load_memory_bytes=t.integer("load_memory_bytes", d.load_memory_bytes,
                                    minimum=16 * 1024**2),
        load_concurrency=t.integer("load_concurrency", d.load_concurrency, minimum=1),
        run_memory_bytes=t.integer("run_memory_bytes", d.run_memory_bytes, minimum=0),
    )
