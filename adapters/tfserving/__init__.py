"""TF Serving backends over gRPC, without TensorFlow in the process."""

from adapters.tfserving.adapter import TfServingAdapter

__all__ = ["TfServingAdapter"]
