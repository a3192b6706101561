"""What `gateway check-config` can tell from an onnx adapter's repository beyond the config
file: `[models.X] labels` naming versions the repository does not hold, or does not serve."""

from __future__ import annotations

from adapters.onnx.config import OnnxAdapterConfig
from adapters.onnx.repository import ModelRepository, wanted_versions
from gateway.config import GatewayConfig
from gateway.tomlconfig import Source


def label_problems(config: GatewayConfig) -> list[str]:
    """One message per label that requests could not reach today, naming file, line and key.

    The repository is live data (versions are copied in, uploaded and retired while the gateway
    runs), so these are findings about now, not config errors: `check-config` fails on them,
    `serve` logs them and answers the label 404 until the version arrives."""
    problems: list[str] = []
    models = None
    for name, model in config.models.items():
        adapter = config.adapters[model.adapter]
        if not isinstance(adapter, OnnxAdapterConfig) or not model.labels:
            continue
        on_disk = set(ModelRepository(adapter.repository).versions(name))
        served = wanted_versions(model, on_disk)
        for label, version in model.labels.items():
            if version in served:
                continue
            if version not in on_disk:
                held = ", ".join(map(str, sorted(on_disk))) or "none"
                why = (f"version {version} is not in the repository "
                       f"({adapter.repository / name} holds versions: {held})")
            else:
                policy = f"version_policy {model.version_policy!r}" + (
                    f" with latest = {model.latest}" if model.version_policy == "latest" else "")
                why = (f"version {version} is in the repository but {policy} does not serve "
                       f"it (it serves {', '.join(map(str, sorted(served))) or 'none'})")
            if models is None:
                models = Source.read(config.source).root().table("models")
            problems.append(str(models.table(name).table("labels").error(label, why)))
    return problems
