"""fewstep: few-step generative modeling (consistency models and diffusion distillation).

    from fewstep.train import train            # the one training loop
    from fewstep import TrainConfig, load_model, sample_consistency, sample_heun
"""

from .config import TrainConfig
from .errors import FewstepError
from .runs import load_model
from .sampling import (SAMPLERS, consistency_taus, sample_consistency, sample_ddim, sample_ddpm, sample_euler,
                       sample_heun, sample_langevin)
from .schedules import karras_sigmas

__version__ = "0.1.0"
__all__ = ["TrainConfig", "FewstepError", "load_model", "SAMPLERS", "consistency_taus", "sample_consistency",
           "sample_ddim", "sample_ddpm", "sample_euler", "sample_heun", "sample_langevin", "karras_sigmas"]
