"""Optimizers of the training loop: Adam (the seeds' choice), AdamW or RAdam, with a learning rate that
is a pure function of the step (linear warm-up, then constant or cosine decay), so a resumed run sets
exactly the rate an uninterrupted one would."""

import fnmatch
import math

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
LR_DECAYS = ("none", "cosine")


def group_parameters(modules, group):
    """The parameters a Group trains: those of its modules whose names match its glob."""
    return [p for name in group.modules for pname, p in modules[name].named_parameters()
            if fnmatch.fnmatchcase(pname, group.params)]


def make_optimizer(params, cfg, group):
    """The run's optimizer over params, with the group's learning rate and betas where it sets them."""
    betas = tuple(group.betas or cfg.betas)
    kwargs = {"weight_decay": cfg.weight_decay} if cfg.weight_decay else {}
    return OPTIMIZERS[cfg.optimizer](params, lr=base_lr(cfg, group), betas=betas, **kwargs)


def base_lr(cfg, group):
    return group.lr or cfg.lr


def lr_at(cfg, group, k):
    """The learning rate of step k (0-based): base * min(1, (k + 1) / warm-up) * decay(k)."""
    base = base_lr(cfg, group)
    warm = min(1.0, (k + 1) / cfg.lr_warmup) if cfg.lr_warmup else 1.0
    n = cfg.lr_decay_steps or cfg.steps         # resolved when the run starts, so a resume keeps the schedule
    decay = 0.5 * (1 + math.cos(math.pi * min(k, n) / n)) if cfg.lr_decay == "cosine" else 1.0
    return base * warm * decay


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr
