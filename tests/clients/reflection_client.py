"""grpcio-reflection's client against a target: the services it lists and, through the
descriptors reflection serves, each service's methods. Runs in .venv-clients; prints one JSON
line.

    python reflection_client.py HOST:PORT
"""

from __future__ import annotations

import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = DescriptorPool(database)
        methods = {name: sorted(m.name for m in pool.FindServiceByName(name).methods)
                   for name in services}
    print(json.dumps({"services": services, "methods": methods}))


if __name__ == "__main__":
    main(sys.argv[1])
