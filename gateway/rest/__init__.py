"""The HTTP front doors (aiohttp): one module per dialect, all calling `gateway.pipeline`."""
