"""fewstep: few-step generative modeling (consistency models and diffusion distillation)."""
