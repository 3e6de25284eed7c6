"""The guide's import path of the transformers backend, which lives in `agentic.ml.backends.transformers_gpu`."""

from .backends.transformers_gpu import GPUModelManager, TransformersModel

__all__ = ["GPUModelManager", "TransformersModel"]
