"""Model kinds: what a run produces, and so how its network is wrapped, which samplers fit it, where
sampling starts and whether it can teach. A method names its kind (`Method.produces`); callers ask the
kind instead of testing method or preconditioning names.

| kind        | call            | wrapper (precond.py)                       | samplers            | teacher |
|-------------|-----------------|--------------------------------------------|---------------------|---------|
| DENOISER    | D(x, sigma)     | the process's: EDMPrecond (VE), VPPrecond   | heun, euler, ddim,  | yes     |
|             |                 |                                            | ddpm, langevin      |         |
| CONSISTENCY | f(x, sigma)     | ConsistencyPrecond (boundary f(x, eps) = x) | consistency         | no      |
| TRAJECTORY  | G(x, t, s)      | TrajectoryPrecond (net embeds s)           | gamma; as DENOISER  | yes     |
|             |                 |                                            | on g(x, t, t)       |         |
| GENERATOR   | G(x_T) = D(x_T, T) | EDMPrecond, evaluated at T (and re-noised | consistency         | no      |
|             |                 | levels for a few steps)                    | (Algorithm 1)       |         |
| LCM         | f(z, w, c, t)   | LCMPrecond (VP eps-net, LCM's boundary)    | lcm                 | no      |
| CLASSIFIER  | logits(x, sigma)| none: the raw network                      | none                | no      |
| AUTOENCODER | encode, decode  | none: the raw network                      | none                | no      |

The noise process (fewstep.processes: VE, VP discrete) is the other half: it owns the sampling grid
and the prior a denoiser's samplers start from. A rectified-flow velocity field is a denoiser on the
rectified-flow interpolation (the conversion is exact), so it needs no kind of its own.
"""

import torch

from .precond import ConsistencyPrecond, LCMPrecond, TrajectoryPrecond
from .processes import VE
from .sampling import SAMPLERS, check_taus, consistency_taus


class Denoiser:
    """D(x, sigma) ~ E[x0 | x] in VE coordinates (EDM's contract); any ODE/SDE sampler of sampling.py."""
    name = "denoiser"
    preview_steps = 9                   # TensorBoard grids: 9 Heun steps, 17 NFE
    samplers = tuple(SAMPLERS)
    teacher = True
    generates = True

    def wrap(self, net, cfg, process):
        return process.denoiser(net, sigma_data=cfg.sigma_data)

    def default_sampler(self, process):
        return process.default_sampler


class ConsistencyFunction:
    """f(x, sigma) with f(x, sigma_min) = x (seed 000); sampled by Algorithm 1 over time points tau."""
    name = "consistency"
    preview_steps = 1
    samplers = ("consistency",)
    teacher = False
    generates = True

    def wrap(self, net, cfg, process):
        model = ConsistencyPrecond(net, cfg.sigma_data, cfg.sigma_min, cfg.boundary)
        model.process = VE()                # Algorithm 1 starts from N(0, T^2 I) and re-noises in VE
        return model

    def default_sampler(self, process):
        return "consistency"

    def grid(self, model, cfg, steps, sigma_start=None, taus=None):
        """Algorithm 1's time points: the explicit taus, or T and steps - 1 Karras levels below it."""
        if taus is None:
            taus = consistency_taus(steps, cfg.sigma_min, sigma_start or cfg.sigma_max, cfg.rho)
        taus = torch.as_tensor(taus, dtype=torch.float64)
        if not torch.isfinite(taus).all() or (taus <= 0).any():
            raise ValueError(f"the time points must be positive finite numbers, got {taus.tolist()}; e.g. --tau 80,0.8")
        if taus.numel() and taus[0] > cfg.sigma_max:
            raise ValueError(f"the first tau {taus[0].item():g} is above the model's sigma_max = {cfg.sigma_max:g}; "
                             f"start the --tau list at {cfg.sigma_max:g} or below")
        check_taus(taus, cfg.sigma_min)
        return taus


class TrajectoryModel(Denoiser):
    """G(x, t, s) jumping from time t to any s <= t (CTM, seed 003): gamma-sampling over Algorithm 1's time
    points (its default), and, as the denoiser g(x, t, t), every ODE/SDE sampler; it teaches like a denoiser."""
    name = "trajectory"
    preview_steps = 1
    samplers = ("gamma", *SAMPLERS)

    def wrap(self, net, cfg, process):
        model = TrajectoryPrecond(net, cfg.sigma_data, cfg.sigma_min)
        model.process = VE()
        return model

    def default_sampler(self, process):
        return "gamma"

    def grid(self, model, cfg, steps, sigma_start=None, taus=None):
        return CONSISTENCY.grid(model, cfg, steps, sigma_start, taus)


class Generator(ConsistencyFunction):
    """A one- or few-step generator x = G(x_T) (DMD, SDS, ADD, distilled flows; seed 003): EDM's
    preconditioning with no boundary condition, so a student starts as its teacher's one-step denoiser;
    sampled by Algorithm 1's loop (one step is G(x_T), more steps re-noise in between)."""
    name = "generator"

    def wrap(self, net, cfg, process):
        return VE().denoiser(net, cfg.sigma_data)


class LatentConsistency(ConsistencyFunction):
    """An LCM f(z, w, c, t) on a discrete VP process (seed 004; precond.LCMPrecond), sampled by LCM's multistep
    sampler on the timesteps of its skipping step k (`VPDiscrete.lcm_timesteps`); w, when the run embeds it,
    is the guidance scale the model was distilled for (a condition, not a second network call)."""
    name = "lcm"
    samplers = ("lcm",)

    def wrap(self, net, cfg, process):
        return LCMPrecond(net, process, cfg.method_kwargs.get("timestep_scaling", 10.0))

    def default_sampler(self, process):
        return "lcm"

    def grid(self, model, cfg, steps, sigma_start=None, taus=None):
        """The noise levels of LCM's `steps` timesteps, or the explicit ones (descending, positive)."""
        if sigma_start is not None:
            raise ValueError("an LCM run cannot start sampling from an image (editing); use a consistency or "
                             "diffusion run")
        if taus is None:
            taus = model.process.ve_sigma(model.process.lcm_timesteps(cfg.method_kwargs["k"], steps))
        taus = torch.as_tensor(taus, dtype=torch.float64)
        if not torch.isfinite(taus).all() or (taus <= 0).any() or (taus[1:] >= taus[:-1]).any():
            raise ValueError(f"LCM's noise levels must be positive and strictly decreasing, got {taus.tolist()}")
        return taus


class NoiseClassifier:
    """logits(x, sigma): the noise-conditional classifier of classifier guidance (seed 002); not a generator."""
    name = "classifier"
    samplers = ()
    teacher = False
    generates = False
    use = "use it for guidance: fewstep eval TEACHER_RUN --classifier RUN --guidance W"     # what it is for instead

    def wrap(self, net, cfg, process):
        return net


class Autoencoder:
    """encode(x) -> (mean, logvar), decode(z): the KL autoencoder of latent diffusion (seed 004's latent space);
    not a generator: a latent dataset (fewstep.data.latent) encodes with it and decodes samples with it."""
    name = "autoencoder"
    samplers = ()
    teacher = False
    generates = False
    use = "train a generator in its latent space: fewstep train edm --net unet --data latents --set data.autoencoder=RUN"

    def wrap(self, net, cfg, process):
        return net


DENOISER, CONSISTENCY, TRAJECTORY, GENERATOR, CLASSIFIER = (Denoiser(), ConsistencyFunction(), TrajectoryModel(),
                                                             Generator(), NoiseClassifier())
LCM = LatentConsistency()
AUTOENCODER = Autoencoder()
