"""The 2-D demo: a teacher (EDM), consistency distillation from it, CT and iCT from scratch, all on the
8-mode Gaussian mixture, sampled at 1, 2 and 4 steps against the teacher's Heun at 35 NFE.

Writes OUT/demo.png (data and every model side by side), OUT/metrics.md (sliced Wasserstein-2 to fresh
data and the 1-step error against the true consistency function) and one run folder per method.
Re-running reuses finished runs.
"""

import os
import time

import torch

from ..config import TrainConfig
from ..generate import generate
from ..metrics.toy import consistency_error, sample_distance
from ..plots import scatter_grid
from ..runs import build_dataset
from ..train import train

N_SAMPLES, STEPS = 4000, (1, 2, 4)
TEACHER_HEUN_STEPS = 18                      # 35 NFE, EDM's CIFAR-10 setting


def demo_configs(out, fast=False):
    """name -> TrainConfig for the demo's four runs (K = steps for the CT/iCT curricula)."""
    scale = 0.1 if fast else 1.0
    steps = lambda n: max(int(n * scale), 50)                                   # noqa: E731
    teacher = os.path.abspath(os.path.join(out, "teacher"))
    return {
        "teacher": TrainConfig(method="edm", steps=steps(4000)),
        "cd": TrainConfig(method="cd", teacher=teacher, steps=steps(3000), method_kwargs={"N": 18, "solver": "heun"}),
        # Curricula shortened for K = 4000 steps (the papers' s1 = 150 / 1280 assume K ~ 10^5-10^6). iCT keeps
        # all of seed 004's choices, lambda = 1/(sigma_{i+1} - sigma_i) included; CT takes iCT's pseudo-Huber
        # and lambda. With the Fourier scale 1 of the MLP, lambda = 1 leaves f near the identity below sigma ~ 1
        # (the modes blur, and multistep sampling re-noises into that region); lambda = 1 only won at scale 16.
        "ct": TrainConfig(method="ct", steps=steps(4000),
                          method_kwargs={"s1": 20, "distance": "pseudo-huber", "weighting": "inverse-dsigma"}),
        "ict": TrainConfig(method="ict", steps=steps(4000), method_kwargs={"s1": 160}),
    }


def evaluate(name, model, cfg, data, steps, sampler=None):
    """Rows of the metrics table for one model: (label, NFE, sliced W2, f error, samples)."""
    rows = []
    for s in steps:
        x, nfe = generate(model, cfg, N_SAMPLES, s, sampler=sampler, generator=torch.Generator().manual_seed(0))
        swd = sample_distance(x, data, generator=torch.Generator().manual_seed(1))
        ferr = None
        if cfg.method != "edm" and s == 1:
            ferr = consistency_error(model, data, n=2048, t=cfg.sigma_max, sigma_min=cfg.sigma_min,
                                     generator=torch.Generator().manual_seed(2))
        rows.append((name, s, nfe, swd, ferr, x))
    return rows


def metrics_table(rows):
    lines = ["| model | steps | NFE | sliced W2 to data | 1-step error to true f |",
             "|---|---|---|---|---|"]
    for name, s, nfe, swd, ferr, _ in rows:
        s, nfe = (s, nfe) if nfe else ("-", "-")                  # the data row has neither
        lines.append(f"| {name} | {s} | {nfe} | {swd:.4f} | {'' if ferr is None else f'{ferr:.4f}'} |")
    return "\n".join(lines)


def run_demo(out="demo_out", fast=False):
    t_start = time.perf_counter()
    configs = demo_configs(out, fast)
    states, timings = {}, {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        states[name] = train(cfg, os.path.join(out, name), resume=True)
        timings[name] = time.perf_counter() - t0
        print(f"[demo] {name:8s} {cfg.steps} steps in {timings[name]:.1f}s")
    data = build_dataset(configs["teacher"])
    reference = data.sample(N_SAMPLES, torch.Generator().manual_seed(123))
    rows = [("data (fresh draw)", 0, 0, sample_distance(reference, data, generator=torch.Generator().manual_seed(1)), None, reference)]
    rows += evaluate("teacher, Heun", states["teacher"].ema.module, configs["teacher"], data, (TEACHER_HEUN_STEPS,))
    rows += evaluate("teacher, Euler", states["teacher"].ema.module, configs["teacher"], data, STEPS, sampler="euler")
    for name in ("cd", "ict", "ct"):
        rows += evaluate(name.upper() if name != "ict" else "iCT", states[name].ema.module, configs[name], data, STEPS)
    table = metrics_table(rows)
    _write_outputs(out, rows, table, timings, time.perf_counter() - t_start)
    print(table)
    print(f"[demo] wrote {out}/demo.png and {out}/metrics.md in {time.perf_counter() - t_start:.0f}s")
    return rows


def _write_outputs(out, rows, table, timings, seconds):
    by_name = {}
    for name, s, nfe, _, _, x in rows:
        by_name.setdefault(name, []).append((f"{s} step{'s' if s > 1 else ''}, {nfe} NFE" if nfe else "data", x))
    grid = [(name, by_name[name]) for name in ("data (fresh draw)", "teacher, Heun", "CD", "iCT", "CT")]
    scatter_grid(grid, os.path.join(out, "demo.png"))
    with open(os.path.join(out, "metrics.md"), "w") as f:
        f.write(f"{table}\n\nTraining seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
                + f"; demo total {seconds:.0f} s.\n")
