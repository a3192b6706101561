"""Dynamic batching for in-process backends: the scheduling loop and batch merge/split."""

from adapters.batching.dynamic import DynamicBatcher

__all__ = ["DynamicBatcher"]
