"""The on-disk model repository, laid out like TF Serving's:
`{root}/{name}/{version}/model.onnx`."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ModelConfig

MODEL_FILE = "model.onnx"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class VersionFile:
    version: int
    path: Path
    mtime_ns: int


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def scan(self) -> dict[str, dict[int, VersionFile]]:
        """Every model directory and its numbered versions that hold a model file."""
        found: dict[str, dict[int, VersionFile]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in self.root.iterdir():
            if not model_dir.is_dir() or not MODEL_NAME.match(model_dir.name):
                continue
            versions = {}
            for version_dir in model_dir.iterdir():
                path = version_dir / MODEL_FILE
                if version_dir.name.isdigit() and int(version_dir.name) > 0 and path.is_file():
                    versions[int(version_dir.name)] = VersionFile(
                        int(version_dir.name), path, path.stat().st_mtime_ns)
            found[model_dir.name] = versions
        return found

    def write(self, name: str, version: int, data: bytes) -> VersionFile:
        """Place a model file atomically, so a concurrent scan never sees half of it."""
        target = self.root / name / str(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))
        try:
            (staging / MODEL_FILE).write_bytes(data)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        path = target / MODEL_FILE
        return VersionFile(version, path, path.stat().st_mtime_ns)

    def remove(self, name: str) -> None:
        """Move the model out of sight at once, then delete it."""
        source = self.root / name
        graveyard = Path(tempfile.mkdtemp(prefix=".deleted-", dir=self.root))
        os.rename(source, graveyard / name)
        shutil.rmtree(graveyard, ignore_errors=True)


def wanted_versions(config: ModelConfig, available: set[int]) -> set[int]:
    """Which of the versions on disk the model's version policy serves."""
    if config.version_policy == "all":
        return set(available)
    if config.version_policy == "specific":
        return available & set(config.versions)
    return set(sorted(available)[-config.latest:])
