"""The endpoint pool every remote backend kind shares (Envoy's cluster, in small parts):

- `endpoint`: one address and what the pool knows of it (calls out, failures, ejection, health);
- `outlier`: outlier ejection from what real requests see (consecutive failures, failure rate);
- `health`: active health checks on an interval with jitter, with the kind's probe;
- `balancer`: the least busy usable endpoint, once more elsewhere if it was unavailable, and
  503 + `Retry-After` at once when every endpoint is out;
- `failures`: which failures count against an endpoint, and what the client is told of them;
- `metrics`: the pool's state as Prometheus metrics.

`adapters/endpoints.py` builds the gRPC flavour (channels, TLS, `grpc.health.v1`) on top.
"""
