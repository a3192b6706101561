"""Routing policies: the files ops edit (`policies/*.toml`), their validation, the router that
applies them, and live reload."""
