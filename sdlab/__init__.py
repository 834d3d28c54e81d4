"""sdlab: a batch experiment and analysis bench for latent diffusion models."""

__version__ = "0.1.0"
