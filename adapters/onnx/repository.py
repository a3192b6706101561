"""The on-disk model repository, laid out like TF Serving's:
`{root}/{name}/{version}/model.onnx`."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.model_config import ModelConfig

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
            if model_dir.is_dir() and MODEL_NAME.match(model_dir.name):
                found[model_dir.name] = self.versions(model_dir.name)
        return found

    def versions(self, name: str) -> dict[int, VersionFile]:
        """The numbered versions of one model that hold a model file."""
        versions: dict[int, VersionFile] = {}
        model_dir = self.root / name
        if not model_dir.is_dir():
            return versions
        for version_dir in model_dir.iterdir():
            path = version_dir / MODEL_FILE
            if version_dir.name.isdigit() and int(version_dir.name) > 0 and path.is_file():
                versions[int(version_dir.name)] = VersionFile(
                    int(version_dir.name), path, path.stat().st_mtime_ns)
        return versions

    def stage(self, data: bytes) -> Path:
        """Write an upload where scans do not look (a name starting with '.'); the model file
        in it can be checked before `place` moves it into the repository."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=self.root))
        try:
            (staging / MODEL_FILE).write_bytes(data)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging / MODEL_FILE

    def place(self, staged: Path, name: str, version: int) -> VersionFile:
        """Move a staged upload in as `name`'s `version` at once, so a scan never sees half of
        it. Raises `FileExistsError` if that version exists."""
        target = self.root / name / str(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(target)
        try:
            os.rename(staged.parent, target)
        except OSError as exc:  # placed meanwhile by another worker (gateway serve --workers)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(target) from None
            raise
        path = target / MODEL_FILE
        return VersionFile(version, path, path.stat().st_mtime_ns)

    @staticmethod
    def discard(staged: Path) -> None:
        """Delete a staged upload that was not placed (no-op once it was)."""
        if staged.parent.name.startswith(".upload-"):
            shutil.rmtree(staged.parent, ignore_errors=True)

    def hide(self, name: str) -> Path:
        """Move the model out of sight at once; `purge` deletes what this returns."""
        graveyard = Path(tempfile.mkdtemp(prefix=".deleted-", dir=self.root))
        os.rename(self.root / name, graveyard / name)
        return graveyard

    @staticmethod
    def purge(graveyard: Path) -> None:
        shutil.rmtree(graveyard, ignore_errors=True)


def wanted_versions(config: ModelConfig, available: set[int]) -> set[int]:
    """Which of the versions on disk the model's version policy serves."""
    if config.version_policy == "all":
        return set(available)
    if config.version_policy == "specific":
        return available & set(config.versions)
    return set(sorted(available)[-config.latest:])
