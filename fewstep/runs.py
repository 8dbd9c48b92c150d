"""A run folder: config.json (the resolved TrainConfig), checkpoint.safetensors (the last good state)
and metrics.jsonl (one line per log interval). This module builds models from a config and loads
them back, for sampling and as teachers."""

import os

from .checkpoint import load_checkpoint, load_state, read_json, unflatten
from .config import TrainConfig
from .data import make_dataset
from .errors import FewstepError
from .methods import METHODS
from .nets import make_net
from .nets.unet import make_unet
from .precond import make_precond
from .processes import VPDiscrete

CONFIG, CHECKPOINT, METRICS = "config.json", "checkpoint.safetensors", "metrics.jsonl"


def build_dataset(cfg):
    try:
        return make_dataset(cfg.data, **cfg.data_kwargs)
    except (TypeError, ValueError) as e:
        raise FewstepError(f"bad data options for dataset {cfg.data!r} ({e}); fix the --set data.KEY values") from None


def net_arguments(cfg, data):
    """The raw network's constructor arguments: the data's shape and classes, then the user's net_kwargs."""
    if cfg.net == "unet":
        C, H, W = data.shape
        kwargs = {"img_resolution": H, "in_channels": C}
    elif cfg.net == "classifier":
        kwargs = {"in_channels": data.shape[0], "noise_conditional": METHODS[cfg.method].precond == "none"}
    else:
        kwargs = {"dim": data.dim}
    if cfg.cond:
        kwargs["num_classes"] = data.num_classes
    return {**kwargs, **cfg.net_kwargs}


def build_model(cfg, data=None):
    """The preconditioned model of a config, freshly initialised: raw network inside the wrapper
    that the method asks for (EDM, VP or consistency). net_kwargs may name a U-Net size: config=cpu-tiny."""
    data = data or build_dataset(cfg)
    if cfg.net in ("unet", "classifier") and len(getattr(data, "shape", ())) != 3:
        raise FewstepError(f"the {cfg.net} network needs image data; dataset {cfg.data!r} is flat: use --net mlp")
    kwargs = net_arguments(cfg, data)
    try:
        net = make_unet(kwargs.pop("config"), **kwargs) if "config" in kwargs else make_net(cfg.net, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise FewstepError(f"bad network options for {cfg.net!r} ({e}); fix the --set net.KEY values") from None
    kind = METHODS[cfg.method].precond
    process = None
    if kind == "vp":
        args = cfg.method_arguments()
        process = VPDiscrete(**{k: args[k] for k in ("T", "beta_start", "beta_end") if k in args})
    return make_precond(kind, net, sigma_data=cfg.sigma_data, sigma_min=cfg.sigma_min,
                        process=process, boundary=cfg.boundary)


def load_config(run_dir):
    if not os.path.isdir(run_dir):
        raise FewstepError(f"run folder {run_dir} does not exist; train one first (fewstep train METHOD --out {run_dir})")
    return TrainConfig.from_dict(read_json(os.path.join(run_dir, CONFIG), "run config")).validate()


def load_model(run_dir, which="ema"):
    """(model, cfg) of a trained run, in eval mode with gradients off. which: "ema", "net" or "target"."""
    cfg = load_config(run_dir)
    path = os.path.join(run_dir, CHECKPOINT)
    tensors, _ = load_checkpoint(path)
    state = unflatten(which, tensors)
    if not state:
        raise FewstepError(f"checkpoint {path} has no {which!r} weights; choose one of: ema, net"
                           + (", target" if unflatten("target", tensors) else ""))
    model = build_model(cfg)
    load_state(model, state, path)
    return model.eval().requires_grad_(False), cfg


def load_teacher(run_dir):
    """The EMA denoiser D(x, sigma) of a diffusion-teacher run, for distillation."""
    if not run_dir or not os.path.isdir(run_dir):
        raise FewstepError(f"teacher run {run_dir!r} not found; train one first: fewstep train edm --out {run_dir or 'RUN'}")
    if not os.path.isfile(os.path.join(run_dir, CHECKPOINT)):
        raise FewstepError(f"teacher run {run_dir} has no checkpoint yet; finish training it (fewstep train edm --out {run_dir} --resume)")
    model, cfg = load_model(run_dir)
    if METHODS[cfg.method].precond not in ("edm", "vp"):
        raise FewstepError(f"teacher run {run_dir} was trained with {cfg.method!r}, not a diffusion teacher; "
                           "pass a run trained with edm or ddpm")
    return model, cfg
