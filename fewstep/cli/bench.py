"""`fewstep bench`: the Fashion-MNIST pipeline under one stated CPU budget, as the seeds' tables measure it.

Trains an EDM teacher, CD from it, CT and iCT from scratch (each a fixed number of steps on a cpu-tiny
U-Net), then measures every model against NFE: FD and precision/recall in the shipped classifier's
feature space (against the test split), sampling images/s, training seconds per step and peak memory.
Writes OUT/bench.md, OUT/bench.json, OUT/fd_vs_nfe.png and sample grids; `--write-docs` appends the table
to docs/BENCHMARKS.md. Re-running reuses finished runs.
"""

import json
import os
import platform
import resource
import time

import torch

from ..config import TrainConfig
from ..errors import FewstepError
from ..evaluate import reference_features, sample_images, score
from ..metrics.features import load_feature_net
from ..plots import image_grid
from ..train import train

IMAGE_NET = {"config": "cpu-tiny"}


def bench_configs(out, budget):
    """name -> TrainConfig; `budget` maps name -> training steps."""
    base = dict(data="fashion-mnist", net="unet", net_kwargs=IMAGE_NET, batch=64, lr=5e-4, ema=0.999,
                log_every=50, ckpt_every=250)
    teacher = os.path.abspath(os.path.join(out, "teacher"))
    return {
        "teacher": TrainConfig(method="edm", steps=budget["teacher"], **base),
        "cd": TrainConfig(method="cd", teacher=teacher, steps=budget["cd"], **base,
                          method_kwargs={"N": 18, "solver": "heun", "distance": "pseudo-huber"}),
        "ct": TrainConfig(method="ct", steps=budget["ct"], **base,
                          method_kwargs={"s1": 40, "distance": "pseudo-huber"}),
        "ict": TrainConfig(method="ict", steps=budget["ict"], **base, method_kwargs={"s1": 160}),
    }


# What each model is sampled with: (label, sampler, step counts).
SAMPLING = {
    "teacher": [("teacher, Euler", "euler", (4, 8, 16)), ("teacher, Heun", "heun", (5, 9))],
    "cd": [("CD", None, (1, 2, 4))], "ct": [("CT", None, (1, 2, 4))], "ict": [("iCT", None, (1, 2, 4))],
}


def parse_budget(text):
    """'teacher=1500,cd=600' -> {"teacher": 1500, "cd": 600}; anything else is one FewstepError."""
    budget = {}
    for item in text.split(","):
        name, _, steps = item.partition("=")
        if not steps.strip().isdigit() or int(steps) < 1:
            raise FewstepError("--budget expects NAME=STEPS items separated by commas (STEPS >= 1), "
                               f"like teacher=1500,cd=600; got {item!r}")
        budget[name.strip()] = int(steps)
    check_names(budget, "--budget")
    return budget


def parse_methods(text):
    methods = [m.strip() for m in text.split(",")]
    check_names(methods, "--methods")
    return methods


def check_names(names, flag):
    unknown = [n for n in names if n not in SAMPLING]
    if unknown:
        raise FewstepError(f"{flag}: unknown run(s) {unknown}; choose from {', '.join(SAMPLING)}")


def peak_memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(out="bench_out", budget=None, methods=("teacher", "cd", "ct", "ict"), n=2000, write_docs=None):
    budget = {"teacher": 1500, "cd": 600, "ct": 1500, "ict": 1500, **(budget or {})}
    configs = bench_configs(out, budget)
    feature_net = load_feature_net()
    ref = reference_features(feature_net)
    rows, t_start = [], time.perf_counter()
    for name in methods:
        cfg = configs[name]
        t0 = time.perf_counter()
        state = train(cfg, os.path.join(out, name), resume=True)
        train_s = _train_seconds(os.path.join(out, name))
        print(f"[bench] {name}: {cfg.steps} steps ({time.perf_counter() - t0:.0f}s this call)", flush=True)
        model = state.ema.module.eval()
        for label, sampler, steps in SAMPLING[name]:
            for s in steps:
                x, nfe, rate = sample_images(model, cfg, n, s, sampler=sampler)
                rows.append({"model": label, "steps": s, "nfe": nfe, **score(feature_net, x, ref)[1], "images_per_sec": rate,
                             "train_sec_per_step": train_s, "peak_mem_mb": peak_memory_mb()})
                image_grid(x[:100], os.path.join(out, f"{name}_{s}steps.png"), nrow=10)
                print("[bench] " + _md_row(rows[-1]), flush=True)
    command = " ".join(["fewstep bench --out", out, "--methods", ",".join(methods),
                        "--budget", ",".join(f"{m}={budget[m]}" for m in methods), "--n", str(n)])
    _write(out, rows, {m: budget[m] for m in methods}, n, time.perf_counter() - t_start, write_docs, command)
    return rows


def _train_seconds(run_dir):
    """Mean training seconds per step over the run's logged intervals."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return sum(r["sec_per_step"] for r in recs) / max(len(recs), 1)


def _md_row(r):
    return (f"| {r['model']} | {r['steps']} | {r['nfe']} | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['images_per_sec']:.0f} | {r['train_sec_per_step']:.3f} | {r['peak_mem_mb']:.0f} |")


def _write(out, rows, budget, n, seconds, write_docs, command):
    from ..plots import fd_vs_nfe_plot
    header = ["| model | steps | NFE | FD | precision | recall | sampling images/s | train s/step | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    table = "\n".join(header + [_md_row(r) for r in rows])
    machine = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}"
    text = (f"Command: `{command}`; {time.strftime('%Y-%m-%d')}; {machine}; {torch.get_num_threads()} threads.\n"
            f"Training steps: {budget} (batch 64, cpu-tiny U-Net); {n} samples per row against the 10000 test images; "
            f"whole run {seconds / 60:.0f} min.\n\n{table}\n")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump(rows, f, indent=2)
    fd_vs_nfe_plot(rows, os.path.join(out, "fd_vs_nfe.png"))
    print(text)
    if write_docs:
        with open(write_docs, "a") as f:
            f.write("\n## Fashion-MNIST: teacher, CD, CT and iCT against NFE (`fewstep bench`)\n\n" + text)
