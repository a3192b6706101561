"""TLS on the gateway's listeners (`[server.tls]`): HTTPS and gRPC over TLS, optionally mutual.

- `config`: the table, parsed and its files checked at load;
- `material`: one consistent reading of the files, and the watch that re-reads them when they
  change (a rotated certificate is served to new connections without a restart);
- `listeners`: what each door hands its server (an `ssl.SSLContext` per connection for HTTP,
  dynamic server credentials for gRPC);
- `subject`: the verified client certificate's subject, for `RequestContext.tls_subject`.
"""
