"""Non-SAE baselines exported through the same parameter dict (e.g. PCA)."""
