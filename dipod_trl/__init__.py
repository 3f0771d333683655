"""dipod_trl: DiPOD RL post-training for masked diffusion language models, on top of TRL."""

__version__ = "0.1.0"

from .config import DiPODConfig  # noqa: E402
from .models import DiffusionLM, diffusion_adapter, load_diffusion_model  # noqa: E402
from .sampler import diffusion_generate  # noqa: E402
from .trainer import DiPODTrainer  # noqa: E402

__all__ = [
    "DiPODConfig",
    "DiPODTrainer",
    "DiffusionLM",
    "diffusion_adapter",
    "diffusion_generate",
    "load_diffusion_model",
]
