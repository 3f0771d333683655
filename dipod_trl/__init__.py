"""dipod_trl: DiPOD RL post-training for masked diffusion language models, on top of TRL."""

__version__ = "0.1.0"
