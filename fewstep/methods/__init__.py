"""Training methods, one file per family, each a small class on the protocol of methods/base.py:
hyperparameters in __init__, the kind of model it produces and its noise process as class attributes,
its optimizer groups and EMA copies declared, and the loss of one group. A single-network method just
writes `method(net, batch, target=..., k=..., generator=...)`. Methods that distill take a `teacher`
denoiser D(x, sigma, **cond). Registering a class here puts it under tests/test_contract.py."""

from .consistency import (ConsistencyDistillation, ConsistencyTraining, ContinuousCD, ContinuousCT,
                          ImprovedConsistencyTraining)
from .adversarial import AdversarialDistillation
from .autoencoder import AutoencoderLoss
from .classifier import NoisyClassifierLoss
from .diffusion import DDPMLoss, EDMLoss
from .distill import KnowledgeDistillation, ProgressiveDistillation
from .flow import RectifiedFlow, Reflow
from .lcm import DiffusionLoRA, LatentConsistencyDistillation, LCMLoRA
from .matching import DistributionMatching, ScoreDistillation
from .trajectory import ConsistencyTrajectory

METHODS = {
    "edm": EDMLoss,                       # diffusion teacher, VE (EDM)
    "ddpm": DDPMLoss,                     # diffusion teacher, VP eps-prediction
    "cd": ConsistencyDistillation,        # Algorithm 2, seed 000
    "ct": ConsistencyTraining,            # Algorithm 3, seed 000
    "ict": ImprovedConsistencyTraining,   # improved CT, seed 004
    "cd-continuous": ContinuousCD,        # continuous-time CD, seed 000
    "ct-continuous": ContinuousCT,        # continuous-time CT, seed 000
    "ctm": ConsistencyTrajectory,         # consistency trajectory models, seeds 003 and 004
    "kd": KnowledgeDistillation,          # naive knowledge distillation, seed 003
    "pd": ProgressiveDistillation,        # progressive distillation, seeds 002 and 003
    "rf": RectifiedFlow,                  # 1-rectified flow from (data, noise), seed 003
    "reflow": Reflow,                     # rectified flow of a teacher's or a flow's own coupling, seed 003
    "dmd": DistributionMatching,          # distribution matching distillation (DMD, DMD2), seed 003
    "sds": ScoreDistillation,             # score distillation sampling and the sample-based estimator, seed 003
    "add": AdversarialDistillation,       # adversarial diffusion distillation, seed 003
    "lcm": LatentConsistencyDistillation, # latent consistency models (guided, skipping step k), seed 004
    "lcm-lora": LCMLoRA,                  # LCM-LoRA: an acceleration adapter on the frozen teacher, seed 004
    "lora": DiffusionLoRA,                # a style LoRA fine-tune of a diffusion teacher, seed 004
    "classifier": NoisyClassifierLoss,    # noise-conditional classifier for classifier guidance, seed 002
    "vae": AutoencoderLoss,               # KL autoencoder of latent diffusion (data=latents), seed 004
}
DISTILLATION = {"cd", "cd-continuous", "ctm", "kd", "pd", "reflow", "dmd", "sds", "add", "lcm", "lcm-lora",
                "lora"}    # methods that need --teacher
