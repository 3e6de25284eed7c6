"""The OpenAI-compatible HTTP API over whichever backend is configured."""
