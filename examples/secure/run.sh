#!/usr/bin/env bash
# Starts the secure example in one command: a local redis-server (unless GATEWAY_REDIS_URL is
# set), a generated JWT secret (unless GATEWAY_JWT_SECRET is set), and the gateway. Arguments
# go to `gateway serve` (e.g. --http-port 9000). When the gateway stops, however it stops
# (Ctrl-C, SIGTERM to this script or to the gateway, a crash), the Redis started here stops too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
make -C "$root" --no-print-directory .venv/.run-deps system-deps >/dev/null
gateway="$root/.venv/bin/gateway"

if [ -z "${GATEWAY_REDIS_URL:-}" ]; then
  port="${REDIS_PORT:-6390}"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    >"$here/redis.log" 2>&1 &
  redis_pid=$!
  trap 'kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true' EXIT
  export GATEWAY_REDIS_URL="redis://127.0.0.1:$port/0"
fi
if [ -z "${GATEWAY_JWT_SECRET:-}" ]; then
  GATEWAY_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"
  export GATEWAY_JWT_SECRET
fi

mint() { "$gateway" token --secret-env GATEWAY_JWT_SECRET --issuer demo-issuer \
  --audience gateway --sub "$1" --scope "$2" --ttl 3600; }
cat <<INFO
Redis:  $GATEWAY_REDIS_URL
Tokens (valid one hour):
  PREDICT=$(mint alice predict)
  ADMIN=$(mint ops "predict admin")
Try:
  curl -s -H "Authorization: Bearer \$PREDICT" -H 'x-user-id: u1' -i \\
       -X POST http://127.0.0.1:8080/v1/models/demo:predict -d '{"instances": [[1, 2, 3, 4]]}'
INFO
# Not `exec`: this shell must outlive the gateway for its EXIT trap to stop Redis. The gateway
# runs as a child in a process group of its own (`set -m` around its start), so a Ctrl-C
# reaches only this shell, which passes one SIGTERM on (a second signal would hurry the drain);
# a SIGTERM to this shell is passed on the same way. We exit with the gateway's status.
set -m
"$gateway" serve --config "$here/gateway.toml" "$@" &
gateway_pid=$!
set +m
trap 'kill -TERM "$gateway_pid" 2>/dev/null || true' INT TERM HUP
status=0
wait "$gateway_pid" || status=$?
while kill -0 "$gateway_pid" 2>/dev/null; do  # a trapped signal ended `wait`, not the gateway
  status=0
  wait "$gateway_pid" || status=$?
done
exit "$status"
