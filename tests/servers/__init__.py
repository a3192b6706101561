"""Stand-ins for the backends the gateway talks to, run in the test's event loop on free ports.

Fixtures live in `tests.servers.fixtures`; a test module loads them with
`pytest_plugins = ["tests.servers.fixtures"]`.
"""
