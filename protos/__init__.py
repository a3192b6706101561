"""Gateway-owned protobuf/gRPC definitions and their generated Python code.

``.proto`` sources sit next to the generated ``*_pb2.py`` / ``*_pb2.pyi`` /
``*_pb2_grpc.py`` modules at upstream-like paths, importable as e.g.
``protos.tensorflow_serving.apis.predict_pb2`` or
``protos.inference.grpc_service_pb2``. Regenerate with
``python scripts/generate_protos.py``; do not edit generated files by hand.
"""
