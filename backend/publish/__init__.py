"""A pruned model leaving PruneBoard: saved so plain `transformers` loads it (`export`), described
(`model_card`) and pushed to the Hugging Face Hub (`hub`)."""
