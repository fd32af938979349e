"""Activation sources (no torch here): in-memory arrays, .npy files, tensorstore stores."""
