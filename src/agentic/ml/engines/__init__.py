"""The local generation engines: llama.cpp continuous batching (with its prefix cache and grammar sampler),
transformers batching (with its JSON constraint), and the token-to-text step both share."""
