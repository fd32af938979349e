"""The torch side: loading HuggingFace models, hook points, activation extraction (the only torch importer)."""
