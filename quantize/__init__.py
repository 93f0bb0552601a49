"""Quamba-style post-training quantization for edgeseq models (observers, Hadamard rotations, recipes)."""
