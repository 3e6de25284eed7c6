"""agentic: one interface for LLM apps on llama.cpp, the OpenAI API or transformers."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
