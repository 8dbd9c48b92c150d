"""diffusers folders in and out (an optional extra: pip install 'fewstep[diffusers]').

Out: `export_run` (`fewstep export RUN OUT`) writes a pixel-space run whose network is the diffusers backend
(fewstep.nets.diffusers with a UNet2DModel) as a diffusers pipeline folder, unet/ + scheduler/ + model_index.json,
which diffusers loads with `Pipeline.from_pretrained(OUT)`. The scheduler's config is the run's, and each turns
clipping off so that diffusers samples what fewstep's samplers sample:

| run                  | model in fewstep                      | scheduler                           | pipeline              |
|----------------------|---------------------------------------|-------------------------------------|-----------------------|
| ddpm                 | VPPrecond, U-Net timestep t - 1       | DDPMScheduler (T, betas, schedule;  | DDPMPipeline (and     |
|                      | (timesteps="vp")                      | epsilon, fixed_small, no clipping)  | DDIMPipeline)         |
| cd, ct, ict,         | ConsistencyPrecond (boundary          | CMStochasticIterativeScheduler      | ConsistencyModel-     |
| cd/ct-continuous     | scalings), 1000 ln(sigma) / 4 ("cm")  | (sigma_min, sigma_max, sigma_data,  | Pipeline              |
|                      |                                       | rho; no clipping)                   |                       |

In: `load_diffusers_teacher` reads a diffusers pipeline folder (model_index.json, unet/, scheduler/) or a U-Net
folder with its scheduler's scheduler_config.json beside the U-Net's config.json as a fewstep teacher, so that
`fewstep train cd --teacher FOLDER --net diffusers` distills it. The scheduler says what the U-Net was trained on:
one with betas (DDPM, DDIM, DPMSolverMultistep, PNDM, Euler, ...; linear or scaled-linear, eps-prediction) is a
`processes.VPDiscrete` teacher (U-Net timestep t - 1); EDMEuler / EDMDPMSolverMultistep is an EDM teacher
(EDMPrecond with the scheduler's sigma_data; U-Net timestep ln(sigma) / 4). A consistency model's folder (CM, LCM,
TCD schedulers) is refused: it cannot teach.
"""

import json
import os

from .errors import FewstepError
from .nets.diffusers import DiffusersUNet, is_diffusers_folder, read_unet_config, unet_folder

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled-linear"}      # diffusers' name -> VPDiscrete's
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
CONSISTENCY_SCHEDULERS = ("CMStochasticIterativeScheduler", "LCMScheduler", "TCDScheduler")
CM_TRAIN_TIMESTEPS = 40         # CMStochasticIterativeScheduler's grid when the run has no N (its own default)

__all__ = ["export_run", "load_diffusers_teacher", "is_diffusers_folder", "diffusers_process_options"]

#----------------------------------------------------------------------------
# In: a diffusers folder as a teacher.


def scheduler_config(folder):
    """The scheduler config of a pipeline folder (scheduler/) or of a U-Net folder (beside or next to it)."""
    folder = os.path.expanduser(str(folder))
    places = [os.path.join(folder, "scheduler", "scheduler_config.json"), os.path.join(folder, "scheduler_config.json"),
              os.path.join(os.path.dirname(os.path.abspath(folder)), "scheduler", "scheduler_config.json")]
    for path in places:
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return json.load(f)
            except (OSError, ValueError) as e:
                raise FewstepError(f"cannot read the scheduler config {path} ({e}); save it again with "
                                   "scheduler.save_pretrained") from None
    raise FewstepError(f"{folder} has no scheduler config, which says what its U-Net was trained on; save the training "
                       f"scheduler beside it: scheduler.save_pretrained({folder!r})")


def teacher_spec(config, folder):
    """(method, process options, net options) of the teacher a scheduler config describes (the module's In)."""
    name = config.get("_class_name", "a scheduler")
    if name in CONSISTENCY_SCHEDULERS:
        raise FewstepError(f"{folder} is a consistency model ({name}), not a diffusion teacher; distill a DDPM, DDIM "
                           "or EDM pipeline")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise FewstepError(f"{folder}'s U-Net predicts {config['prediction_type']!r}; fewstep reads eps-prediction "
                           "diffusers teachers only")
    if name in EDM_SCHEDULERS:
        return "edm", {"sigma_data": float(config.get("sigma_data", 0.5))}, {"timesteps": "edm"}
    if "beta_schedule" not in config:
        raise FewstepError(f"{folder}'s scheduler {name} names no betas; fewstep reads DDPM-like (betas) and EDM schedulers")
    if config.get("trained_betas") is not None or config["beta_schedule"] not in BETA_SCHEDULES:
        raise FewstepError(f"{folder}'s betas ({config.get('trained_betas') and 'trained_betas' or config['beta_schedule']}) "
                           f"are not one of fewstep's schedules {sorted(BETA_SCHEDULES)}; distill a teacher with those")
    if config.get("rescale_betas_zero_snr"):
        raise FewstepError(f"{folder}'s scheduler rescales to zero terminal SNR, an infinite noise level fewstep cannot "
                           "sample from; distill a teacher without rescale_betas_zero_snr")
    T = int(config.get("num_train_timesteps", 1000))
    process = {"T": T, "beta_start": float(config.get("beta_start", 1e-4)), "beta_end": float(config.get("beta_end", 0.02)),
               "schedule": BETA_SCHEDULES[config["beta_schedule"]]}
    return "ddpm", process, {"timesteps": "vp", "T": T}


def diffusers_process_options(folder):
    """The VPDiscrete options (T, betas, schedule) of a diffusers folder's scheduler; {} for an EDM one."""
    method, process, _ = teacher_spec(scheduler_config(folder), folder)
    return process if method == "ddpm" else {}


def load_diffusers_teacher(folder):
    """(model, cfg) of a diffusers pipeline or U-Net folder as fewstep teacher (the module's In): a DENOISER in
    eval mode, and a TrainConfig that describes it (method ddpm or edm, net diffusers at the folder's U-Net)."""
    from .config import TrainConfig
    from .kinds import DENOISER
    from .processes import VE, VPDiscrete
    method, process, net_options = teacher_spec(scheduler_config(folder), folder)
    try:
        unet = unet_folder(folder)
        if read_unet_config(unet).get("_class_name") != "UNet2DModel":
            raise ValueError("it is not a UNet2DModel; a text-conditional U-Net needs its text encoder's "
                             "encoder_hidden_states, which fewstep does not make")
        net = DiffusersUNet(path=unet, **net_options)
    except ValueError as e:
        raise FewstepError(f"cannot read the teacher {folder} ({str(e).splitlines()[0]})") from None
    sigma_data = process.pop("sigma_data", 0.5)
    model = (VPDiscrete(**process) if method == "ddpm" else VE()).denoiser(net, sigma_data=sigma_data)
    model.kind = DENOISER
    cfg = TrainConfig(method=method, method_kwargs=process, net="diffusers", sigma_data=sigma_data,
                      net_kwargs={"path": unet, **net_options}, cond=net.num_classes > 0)
    return model.eval().requires_grad_(False), cfg


def student_network(teacher):
    """The net options of a --net diffusers student of a diffusers teacher: a fresh U-Net of its architecture."""
    try:
        return {"config": read_unet_config(unet_folder(teacher))}
    except ValueError as e:
        raise FewstepError(f"cannot read the teacher {teacher} ({str(e).splitlines()[0]})") from None

#----------------------------------------------------------------------------
# Out: a run as a diffusers pipeline folder.


def pipeline_of(model, cfg, run_dir):
    """The diffusers pipeline (U-Net and scheduler) that samples the run's model (the module's Out table)."""
    import diffusers
    from .kinds import CONSISTENCY, DENOISER
    from .precond import ConsistencyPrecond, VPPrecond
    net = model.net
    if type(net.unet).__name__ != "UNet2DModel":
        raise FewstepError(f"run {run_dir}'s U-Net is a {type(net.unet).__name__}; diffusers' unconditional pipelines "
                           "take a UNet2DModel: train with net.config naming one")
    if model.kind is DENOISER and type(model) is VPPrecond and net.timesteps == "vp" and net.T == model.process.T:
        if net.num_classes:
            raise FewstepError(f"run {run_dir} is class-conditional and DDPMPipeline passes no labels; export an "
                               "unconditional ddpm run (or a class-conditional cd, ct, ict run)")
        p = model.process
        scheduler = diffusers.DDPMScheduler(
            num_train_timesteps=p.T, beta_start=p.beta_start, beta_end=p.beta_end,
            beta_schedule={v: k for k, v in BETA_SCHEDULES.items()}[p.schedule], clip_sample=False,
            prediction_type="epsilon", variance_type="fixed_small")
        return diffusers.DDPMPipeline(unet=net.unet, scheduler=scheduler)
    if model.kind is CONSISTENCY and isinstance(model, ConsistencyPrecond) and net.timesteps == "cm":
        if model.boundary != "scalings":
            raise FewstepError(f"run {run_dir} uses the consistency boundary {model.boundary!r}; diffusers' scheduler "
                               "applies the boundary scalings: train with --set boundary=scalings to export")
        scheduler = diffusers.CMStochasticIterativeScheduler(
            num_train_timesteps=int(cfg.method_kwargs.get("N", CM_TRAIN_TIMESTEPS)), sigma_min=cfg.sigma_min,
            sigma_max=cfg.sigma_max, sigma_data=cfg.sigma_data, rho=cfg.rho, clip_denoised=False)
        return diffusers.ConsistencyModelPipeline(unet=net.unet, scheduler=scheduler)
    raise FewstepError(f"run {run_dir} ({cfg.method}, net.timesteps={net.timesteps!r}) has no diffusers pipeline; "
                       "fewstep exports ddpm runs (DDPMPipeline) and cd, ct, ict runs (ConsistencyModelPipeline) "
                       "trained with --net diffusers and their default net.timesteps")


def export_run(run_dir, out, *, which="ema", overwrite=False):
    """Write the run's model (its `which` weights) as a diffusers pipeline folder `out`; returns the pipeline."""
    from .outputs import output_dir
    from .runs import load_config, load_model
    cfg = load_config(run_dir)
    if cfg.net != "diffusers":
        raise FewstepError(f"run {run_dir} has fewstep's own {cfg.net!r} network, which diffusers cannot load; "
                           "train with --net diffusers to export")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise FewstepError("fewstep export needs the diffusers package: pip install 'fewstep[diffusers]'") from None
    if cfg.method in ("lcm-lora", "lora"):
        raise FewstepError(f"run {run_dir} is a {cfg.method} run, whose network carries a LoRA adapter; merge it into "
                           "a plain run first (fewstep lora apply ... --out RUN2) or export its teacher")
    if cfg.data == "latents":
        raise FewstepError(f"run {run_dir} samples latents of {cfg.data!r}; fewstep exports pixel-space runs only "
                           "(DDPMPipeline and ConsistencyModelPipeline have no decoder)")
    model, cfg = load_model(run_dir, which)
    pipeline = pipeline_of(model, cfg, run_dir)
    pipeline.save_pretrained(output_dir(out, None, ("model_index.json", "unet", "scheduler"), overwrite))
    return pipeline
