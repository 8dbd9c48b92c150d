"""Latent consistency models (seed 004, "Latent Consistency Models"; Luo et al. 2023): consistency distillation of
a classifier-free-guided, eps-prediction diffusion model on a discrete VP process (Stable Diffusion's kind; fewstep's
latent runs: data/latent.py), with the guidance scale w as an input of the student, the CFG-augmented target
through a DDIM (or DPM-Solver-2) step, and the skipping step k."""

import torch

from ..guidance import ClassifierFreeGuidance
from ..kinds import DENOISER, LCM
from ..precond import append_dims
from ..processes import VPDiscrete
from ..sampling import ode_step
from .base import Group, Method
from .common import make_distance, randn_like, split_batch


class LatentConsistencyDistillation(Method):
    """LCM distillation (seed 004): on the timesteps 1 < k < 2k < ... < T draw n and w ~ U[w_min, w_max], noise the
    data to z_{t_{n+k}}, and match
        d(f_theta(z_{t_{n+k}}, w, c, t_{n+k}), f_theta^-(z_hat_{t_n}, w, c, t_n)),
        z_hat_{t_n} = z_{t_{n+k}} + (1 + w) Psi(z_{t_{n+k}}, t_{n+k}, t_n, c) - w Psi(z_{t_{n+k}}, t_{n+k}, t_n, null),
    Psi the increment of one DDIM step of the teacher (or of DPM-Solver-2, solver="dpm2", run on the guided
    denoiser), theta^- an EMA of rate mu. A DDIM step is linear in the denoiser, so the augmented step is DDIM on
    the guided denoiser (1 + w) D_c - w D_null, which is how it is computed. The student starts from the teacher,
    its w-embedding at zero; the process (T, betas; Stable Diffusion's by default) is the teacher's unless given."""

    produces, process = LCM, VPDiscrete
    starts_from_teacher = True
    process_from_teacher = True         # config.resolved() copies the teacher's T and betas
    conditions = ("w",)
    net_scalars = ("w",)                # the network embeds the guidance scale w

    def emas(self):
        return {"target": ("net", self.mu)}

    def __init__(self, teacher, k=20, w_min=0.0, w_max=3.0, solver="ddim", distance="l2", mu=0.95,
                 timestep_scaling=10.0, c=None, T=1000, beta_start=0.00085, beta_end=0.012, schedule="scaled-linear"):
        if solver not in ("ddim", "dpm2"):
            raise ValueError(f"unknown LCM solver {solver!r}; choose 'ddim' or 'dpm2'")
        if not 0 <= w_min <= w_max:
            raise ValueError(f"LCM needs 0 <= w_min <= w_max, got w_min={w_min}, w_max={w_max}")
        self.process = VPDiscrete(T, beta_start, beta_end, schedule)
        self.t = self.process.lcm_timesteps(k)              # ascending; t[0] = 1 is the boundary
        self.teacher, self.k, self.w_min, self.w_max, self.solver = teacher, k, w_min, w_max, solver
        self.mu_value, self.timestep_scaling, self.d = mu, timestep_scaling, make_distance(distance, c=c)
        self.null_label = getattr(getattr(teacher, "net", None), "num_classes", None)
        theirs = getattr(getattr(teacher, "process", None), "config", lambda: None)()
        if theirs is not None and theirs != self.process.config():
            raise ValueError(f"the teacher's process is {theirs} but the student's {self.process.config()}; leave out "
                             "--set T/beta_start/beta_end/schedule (the student takes the teacher's)")

    def mu(self, k):
        return self.mu_value

    @classmethod
    def check_teacher(cls, options, teacher_cfg):
        if cls.guidance(options) > 0 and not teacher_cfg.cond:
            raise ValueError("it is unconditional, and LCM distills a classifier-free-guided teacher: train a "
                             f"class-conditional one (--set cond=true --set label_dropout=0.1), or {cls.no_guidance}")
        if cls.guidance(options) > 0 and not teacher_cfg.label_dropout:
            raise ValueError(f"it was trained with label_dropout=0, so its null label (the unconditional D of the "
                             f"guided target) was never learned; retrain it with --set label_dropout=0.1, or {cls.no_guidance}")

    @staticmethod
    def guidance(options):
        return options["w_max"]

    no_guidance = "--set w_max=0"

    def prepare(self, run):
        if self.w_max > 0 and not run.num_classes:
            raise ValueError("LCM distills a classifier-free-guided teacher: use a class-conditional run (--set "
                             f"cond=true, a teacher trained with label_dropout > 0), or {self.no_guidance}")

    def draw_w(self, n, generator):
        return self.w_min + (self.w_max - self.w_min) * torch.rand(n, generator=generator, dtype=torch.float64)

    def solve(self, x, sigma, sigma_next, w, cond):
        """One DDIM step (Euler in VE coordinates) or one DPM-Solver-2 step of the teacher under classifier-free
        guidance (1 + w) D(x, c) - w D(x, null), one w per row (seed 002)."""
        D = ClassifierFreeGuidance(self.teacher, w, self.null_label) if "class_labels" in cond else self.teacher
        return ode_step(D, x, sigma, sigma_next, "euler" if self.solver == "ddim" else "dpm2", cond)

    def loss(self, group, nets, batch, *, k, generator):
        x0, cond = split_batch(batch)
        n = torch.randint(0, len(self.t) - 1, (x0.shape[0],), generator=generator)
        sigma_n, sigma_nk = (self.process.ve_sigma(self.t[i]).to(x0) for i in (n, n + 1))
        w = self.draw_w(x0.shape[0], generator).to(x0)
        x = x0 + append_dims(sigma_nk, x0.ndim) * randn_like(x0, generator)     # z_{t_{n+k}} / alpha
        with torch.no_grad():
            x_hat = self.solve(x, sigma_nk, sigma_n, w, cond)
            target = nets.get("target", nets["net"])(x_hat, sigma_n, **self.student_cond(cond, w))
        pred = nets["net"](x, sigma_nk, **self.student_cond(cond, w))
        return self.d(pred, target).mean()

    def student_cond(self, cond, w):
        return {**cond, "w": w}


class LoRAOnly:
    """A method that trains only a LoRA adapter (peft; fewstep.lora), named `adapter`, on the frozen network it
    starts from (its teacher's)."""

    groups = {"net": Group(params="*lora_*")}
    adapter = None

    @classmethod
    def adapt_net(cls, net, options):
        from ..lora import add_lora
        return add_lora(net, options.get("rank", 8), options.get("alpha"), adapter=cls.adapter)


class LCMLoRA(LoRAOnly, LatentConsistencyDistillation):
    """LCM-LoRA (seed 004, "LCM-LoRA"): LCM distillation that trains only a LoRA adapter ("lcm", rank r) on the
    frozen teacher network, at one fixed guidance scale w (the student has no w input), with the student
    itself (no gradient) as theta^-. The trained adapter is an "acceleration vector" tau_1: saved alone
    (`fewstep lora save`), it turns the teacher, or a fine-tune of it, into a few-step sampler, and combines
    with a style adapter as lambda_1 tau_1 + lambda_2 tau_2 (`fewstep lora apply`, fewstep.lora)."""

    conditions, net_scalars = (), ()
    adapter = "lcm"
    no_guidance = "--set w=0"

    @staticmethod
    def guidance(options):
        return options["w"]

    def emas(self):
        return {}

    def __init__(self, teacher, w=1.0, rank=8, alpha=None, k=20, solver="ddim", distance="l2", timestep_scaling=10.0,
                 c=None, T=1000, beta_start=0.00085, beta_end=0.012, schedule="scaled-linear"):
        super().__init__(teacher, k=k, w_min=w, w_max=w, solver=solver, distance=distance, mu=0.0,
                         timestep_scaling=timestep_scaling, c=c, T=T, beta_start=beta_start, beta_end=beta_end,
                         schedule=schedule)
        self.w, self.rank, self.alpha = w, rank, alpha

    def student_cond(self, cond, w):
        return cond


class DiffusionLoRA(LoRAOnly, Method):
    """A LoRA fine-tune of an eps-prediction diffusion teacher (seed 004's "style" LoRA, whose update tau_2
    LCM-LoRA combines with its acceleration vector): DDPM's loss E ||eps_theta(x_t, t) - eps||^2 on the run's
    data (a subset of classes, another dataset of the same shape), only the adapter "style" trained on the
    frozen teacher network; the process is the teacher's."""

    produces, process = DENOISER, VPDiscrete
    starts_from_teacher = True
    process_from_teacher = True
    adapter = "style"

    def __init__(self, teacher, rank=8, alpha=None, T=1000, beta_start=1e-4, beta_end=0.02, schedule="linear"):
        from .diffusion import DDPMLoss
        self.ddpm = DDPMLoss(T, beta_start, beta_end, schedule)
        self.process, self.teacher = self.ddpm.process, teacher

    def __call__(self, net, batch, *, generator=None, **_):
        return self.ddpm(net, batch, generator=generator)
