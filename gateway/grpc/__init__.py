"""The gRPC front doors (grpc.aio, in the same event loop as HTTP), all calling the pipeline."""
