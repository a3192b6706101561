#!/usr/bin/env python3
"""Regenerate the Python modules for the gateway's own ``.proto`` files.

The ``.proto`` sources live under ``protos/`` at upstream-like relative paths
(``protos/tensorflow/core/framework/tensor.proto``, ...) and import each other
as ``"protos/..."``. protoc is run with the repository root as the only
project include path, so every generated module lands next to its source and
imports as ``protos.<upstream path>`` (e.g. ``protos.tensorflow_serving.apis.
predict_pb2``). Nothing is importable as a top-level ``tensorflow`` package,
so the gateway never shadows (or pulls in) a real TensorFlow.

For every source this writes ``*_pb2.py`` and ``*_pb2.pyi``; sources that
declare a ``service`` also get ``*_pb2_grpc.py``. Package ``__init__.py``
files are written too (empty), and generated files whose source has gone are
deleted. The output depends only on the sources and the grpcio-tools version.

Usage::

    python scripts/generate_protos.py               # regenerate in place
    python scripts/generate_protos.py --check       # exit 1 if stale
    python scripts/generate_protos.py --out-dir D   # write D/protos/... instead
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_SERVICE_RE = re.compile(r"^\s*service\s+\w+\s*\{", re.MULTILINE)


def proto_sources(root: Path = ROOT) -> list[Path]:
    """All ``.proto`` files of the package, sorted for a stable protoc call."""
    return sorted((root / PACKAGE).rglob("*.proto"))


def _declares_service(proto: Path) -> bool:
    text = "\n".join(line.split("//", 1)[0] for line in proto.read_text().splitlines())
    return _SERVICE_RE.search(text) is not None


def expected_outputs(root: Path = ROOT) -> list[str]:
    """Relative paths (POSIX) of every file the generator owns."""
    outputs: set[str] = set()
    for proto in proto_sources(root):
        rel = proto.relative_to(root).with_suffix("")
        outputs.add(f"{rel.as_posix()}_pb2.py")
        outputs.add(f"{rel.as_posix()}_pb2.pyi")
        if _declares_service(proto):
            outputs.add(f"{rel.as_posix()}_pb2_grpc.py")
        package_dir = rel.parent
        while package_dir != Path(PACKAGE) and package_dir != Path("."):
            outputs.add(f"{package_dir.as_posix()}/__init__.py")
            package_dir = package_dir.parent
    return sorted(outputs)


def _owned_files(base: Path) -> set[str]:
    """Generated-looking files currently present under ``base/protos``."""
    found: set[str] = set()
    pkg = base / PACKAGE
    if not pkg.is_dir():
        return found
    for path in pkg.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(base).as_posix()
        is_sub_init = path.name == "__init__.py" and path.parent != pkg
        if rel.endswith(GENERATED_SUFFIXES) or is_sub_init:
            found.add(rel)
    return found


def _run_protoc(sources: list[Path], out: Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # no stubs upstream

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s) for s in sources),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def generate(out_dir: Path) -> list[str]:
    """Write all generated files under ``out_dir/protos``; return their paths.

    Generated files under ``out_dir/protos`` whose source is gone are deleted.
    The generator owns every ``*_pb2*.py[i]`` file and every ``__init__.py``
    below ``protos/`` (but not ``protos/__init__.py``); other files, such as
    the ``.proto`` sources, are never touched.
    """
    sources = proto_sources()
    if not sources:
        raise SystemExit(f"no .proto files under {ROOT / PACKAGE}")
    wanted = expected_outputs()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _run_protoc(sources, tmp)
        for rel in wanted:
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            produced = tmp / rel
            if rel.endswith("__init__.py"):
                dest.write_bytes(b"")
            elif produced.is_file():
                shutil.copyfile(produced, dest)
            else:
                raise SystemExit(f"protoc did not produce {rel}")
    for rel in sorted(_owned_files(out_dir) - set(wanted)):
        (out_dir / rel).unlink()
    return wanted


def check() -> int:
    """Regenerate into a temporary tree and compare it with the checked-in one."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        wanted = generate(tmp)
        present = _owned_files(ROOT)
        problems = [f"missing: {rel}" for rel in wanted if rel not in present]
        problems += [f"stale (no source): {rel}" for rel in sorted(present - set(wanted))]
        problems += [
            f"out of date: {rel}"
            for rel in wanted
            if rel in present and not filecmp.cmp(tmp / rel, ROOT / rel, shallow=False)
        ]
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("run: python scripts/generate_protos.py", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--out-dir",
        type=Path,
        help="write DIR/protos/... instead of regenerating in place",
    )
    group.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the checked-in generated code is stale",
    )
    args = parser.parse_args(argv)
    if args.check:
        return check()
    out_dir = args.out_dir.resolve() if args.out_dir else ROOT
    written = generate(out_dir)
    print(f"generated {len(written)} files under {out_dir / PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
