"""Dialect codecs: client JSON to internal tensors and back, one module per encoding."""
