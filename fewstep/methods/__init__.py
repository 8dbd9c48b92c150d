"""Training methods, one file per family. A method is a small object: hyperparameters in __init__,
`method(net, batch, target=..., k=..., generator=...)` returns the loss. Class attributes tell the
training loop what it needs: `precond` (which wrapper the network gets) and `uses_target` (whether
to keep an EMA target theta^- updated with rate `method.mu(k)`). Methods that distill take a
`teacher` denoiser D(x, sigma, **cond)."""

from .consistency import (ConsistencyDistillation, ConsistencyTraining, ContinuousCD, ContinuousCT,
                          ImprovedConsistencyTraining)
from .classifier import NoisyClassifierLoss
from .diffusion import DDPMLoss, EDMLoss

METHODS = {
    "edm": EDMLoss,                       # diffusion teacher, VE (EDM)
    "ddpm": DDPMLoss,                     # diffusion teacher, VP eps-prediction
    "cd": ConsistencyDistillation,        # Algorithm 2, seed 000
    "ct": ConsistencyTraining,            # Algorithm 3, seed 000
    "ict": ImprovedConsistencyTraining,   # improved CT, seed 004
    "cd-continuous": ContinuousCD,        # continuous-time CD, seed 000
    "ct-continuous": ContinuousCT,        # continuous-time CT, seed 000
    "classifier": NoisyClassifierLoss,    # noise-conditional classifier for classifier guidance, seed 002
}
DISTILLATION = {"cd", "cd-continuous"}    # methods that need --teacher
