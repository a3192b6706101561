"""The standard gRPC health client (grpcio-health-checking) against a target: `Check` for the
server and each service, and the first `Watch` update. Runs in .venv-clients; prints one JSON
line.

    python health_client.py HOST:PORT SERVICE...
"""

from __future__ import annotations

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def status_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def main(target: str, services: list[str]) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        checked = {service: status_name(stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10).status)
            for service in ["", *services]}
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        first = status_name(next(watch).status)
        watch.cancel()
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
            unknown = "OK"
        except grpc.RpcError as exc:
            unknown = exc.code().name
    print(json.dumps({"check": checked, "watch": first, "unknown_service": unknown}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
