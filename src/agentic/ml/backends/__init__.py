"""The built-in backends, one module each: llama_cpp, openai_api, transformers_gpu; and fallback, the chain of them.

The guide's module paths (`agentic.ml.model_manager`, `openai_model_manager`, `gpu_model_manager`) import
from here.
"""
