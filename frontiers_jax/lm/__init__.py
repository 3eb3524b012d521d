"""Language models: tokenizers, the transformer, and what it learns to do."""
