"""Embedding-layer research framework: token embeddings, positional schemes, LM training."""
