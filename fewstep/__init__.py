"""fewstep: few-step generative modeling (consistency models and diffusion distillation).

    from fewstep.train import train            # the one training loop
    from fewstep import TrainConfig, load_model, sample_consistency, sample_heun

The names below are imported on first use, so that `fewstep --help` (and a Ctrl-C while it starts)
does not wait for torch.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "TrainConfig": "config", "FewstepError": "errors", "load_model": "runs", "karras_sigmas": "schedules",
    **{name: "sampling" for name in ("SAMPLERS", "consistency_taus", "sample_consistency", "sample_ddim",
                                     "sample_ddpm", "sample_euler", "sample_heun", "sample_langevin",
                                     "sample_dpm2", "sample_dpmpp_2m")},
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'fewstep' has no attribute {name!r}")
