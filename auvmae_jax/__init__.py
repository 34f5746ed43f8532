"""auvmae-jax: AU-vMAE (VideoMAE pre-training + AU-pair knowledge fine-tuning) in JAX/Flax."""

__version__ = "0.1.0"
