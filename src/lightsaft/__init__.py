"""LightSAFT pipeline."""
