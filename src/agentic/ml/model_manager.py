"""The guide's import path of the llama.cpp backend, which lives in `agentic.ml.backends.llama_cpp`."""

from .backends.llama_cpp import LlamaCppModel, ModelManager, resolve_gguf_path

__all__ = ["LlamaCppModel", "ModelManager", "resolve_gguf_path"]
