"""entropix_rl: entropy dynamics of RL on reasoning language models, in JAX."""

__version__ = "0.1.0"
