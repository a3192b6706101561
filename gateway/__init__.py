"""Inference gateway: one public endpoint in front of many model backends."""

__version__ = "0.1.0"
