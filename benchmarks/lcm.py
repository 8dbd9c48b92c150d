"""Latent consistency models on Fashion-MNIST (seed 004's tables in kind): the numbers of docs/BENCHMARKS.md.

    python benchmarks/lcm.py --out bench_lcm                # about an hour on one CPU core

Trains (or reuses: the command resumes) a small KL autoencoder, a class-conditional eps-prediction teacher in
its latent space on Stable Diffusion's scaled-linear schedule (label dropout 0.1), LCM with the skipping step k
in {1, 5, 10, 20, 50} under one budget, LCM-LoRA at the table's fixed w, and a "style" LoRA fine-tune of the
teacher on the footwear classes. Then measures, at the fixed guidance scale w:
- LCM at 1, 2, 4, 8 steps against the teacher's DDIM, DPM-Solver-2 and DPM-Solver++(2M) at the same steps
  (a guided teacher costs 2 evaluations a step): FD after decoding, precision/recall, and how often the shipped
  classifier's top-1 is the requested class;
- the k ablation at 1 and 4 steps;
- LCM-LoRA at 4 steps on the teacher and on the style fine-tune (W + tau_1 + tau_2, merged), on the footwear
  classes against the test split's footwear, with trainable against full parameter counts.
Writes OUT/lcm.md, OUT/lcm.json, sample grids and OUT/lcm_fmnist.png (LCM and the teacher's solvers side by side).
"""

import argparse
import json
import os
import re
import sys
import time

import torch

from fewstep.cli.lora import apply, save
from fewstep.config import TrainConfig
from fewstep.data.images import FashionMNIST
from fewstep.evaluate import class_match, crop_to, reference_features, sample_images
from fewstep.generate import generate
from fewstep.metrics.fd import extract_features, fd_from_features
from fewstep.metrics.features import load_feature_net
from fewstep.metrics.precision_recall import precision_recall
from fewstep.plots import image_grid, image_rows
from fewstep.runs import load_decoder, load_model
from fewstep.train import train

FOOTWEAR = [5, 7, 9]                                    # sandal, sneaker, ankle boot: the style LoRA's subset
SD_SCHEDULE = {"schedule": "scaled-linear", "beta_start": 0.00085, "beta_end": 0.012}


def plan(args):
    """name -> (method, teacher name, method options, steps, extra config)."""
    latent = dict(data="latents", net="unet", net_kwargs={"config": "cpu-tiny"}, cond=True, batch=64, lr=5e-4)
    runs = {
        "ae": ("vae", None, {}, args.ae_steps, dict(data="fashion-mnist", net="autoencoder", batch=64,
                                                      data_kwargs={"pad_to": 32}, lr=1e-3, log_every=100, ckpt_every=1000)),
        "teacher": ("ddpm", None, SD_SCHEDULE, args.teacher_steps, dict(latent, label_dropout=0.1)),
        "lcm-lora": ("lcm-lora", "teacher", {"w": args.w, "k": 20, "rank": args.rank}, args.budget, dict(latent, lr=3e-3)),
        "style": ("lora", "teacher", {"rank": args.rank}, args.style_steps,
                  dict(latent, lr=3e-3, label_dropout=0.1)),
    }
    for k in args.k:
        runs[f"lcm k={k}"] = ("lcm", "teacher", {"k": k, "w_max": 2 * args.w}, args.budget, latent)
    return runs


def train_all(out, runs):
    done = {}
    for name, (method, teacher, options, steps, extra) in runs.items():
        path = os.path.join(out, name.replace(" ", "-").replace("=", ""))
        extra = dict(extra)
        if extra.get("data") == "latents":
            extra["data_kwargs"] = {"autoencoder": done["ae"][0], **({"classes": FOOTWEAR} if name == "style" else {})}
        extra = {"log_every": max(steps // 10, 1), "ckpt_every": max(steps // 4, 1), **extra}
        cfg = TrainConfig(method=method, teacher=done[teacher][0] if teacher else None, method_kwargs=options,
                          steps=steps, **extra)
        t0 = time.perf_counter()
        train(cfg, path, resume=True, progress=True)         # about ten lines a run in the log
        done[name] = (path, time.perf_counter() - t0)
        print(f"[lcm] {name}: {steps} steps, {done[name][1]:.0f}s", file=sys.stderr, flush=True)
    return done


def measure(rows, name, model, cfg, steps, *, sampler=None, w, feature_net, ref, n, out, labels=None):
    """One row: n decoded samples (balanced labels, or drawn from `labels`), FD/precision/recall against `ref`."""
    decoder = load_decoder(cfg)
    if labels is None:
        x, nfe, rate = sample_images(model, cfg, n, steps, sampler=sampler, guidance=w, decoder=decoder)
        asked = torch.arange(n) % 10
    else:
        asked = torch.tensor(labels)[torch.arange(n) % len(labels)]
        t0 = time.perf_counter()
        z, nfe = generate(model, cfg, n, steps, sampler=sampler, guidance=w, cond={"class_labels": asked},
                          generator=torch.Generator().manual_seed(0))
        x, rate = decoder(z).clamp(-1, 1), n / (time.perf_counter() - t0)
    feats = extract_features(feature_net, crop_to(x, 28))
    rows.append({"model": name, "steps": steps, "nfe": nfe, "fd": fd_from_features(feats, ref),
                 **precision_recall(ref, feats, k=3), "class_match": class_match(feature_net, feats, asked),
                 "images_per_sec": rate})
    image_grid(x[:100], os.path.join(out, f"{re.sub(r'[^A-Za-z0-9=.-]+', '_', name)}_{steps}.png"), nrow=10)
    r = rows[-1]
    print(f"[lcm] {name:28s} {steps:>3} steps  NFE {nfe:>3}  FD {r['fd']:7.2f}  P {r['precision']:.3f}  "
          f"R {r['recall']:.3f}  class {r['class_match']:.3f}", file=sys.stderr, flush=True)
    return x[:16]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_lcm")
    p.add_argument("--w", type=float, default=1.0, help="the table's guidance scale ((w + 1) D_c - w D_u)")
    p.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[1, 5, 10, 20, 50])
    p.add_argument("--ae-steps", type=int, default=2000)
    p.add_argument("--teacher-steps", type=int, default=4000)
    p.add_argument("--budget", type=int, default=500, help="training steps of every LCM and LCM-LoRA run")
    p.add_argument("--style-steps", type=int, default=500)
    p.add_argument("--rank", type=int, default=4, help="LoRA rank of LCM-LoRA and the style fine-tune")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    args = p.parse_args(argv)
    runs = plan(args)
    done = train_all(args.out, runs)
    feature_net = load_feature_net()
    ref = reference_features(feature_net)
    rows = []
    kw = dict(w=args.w, feature_net=feature_net, ref=ref, n=args.n, out=args.out)
    teacher, tcfg = load_model(done["teacher"][0])
    lcm, lcfg = load_model(done["lcm k=20"][0]) if 20 in args.k else load_model(done[f"lcm k={args.k[-1]}"][0])
    panels = {}
    for steps in (1, 2, 4, 8):
        x = measure(rows, "lcm", lcm, lcfg, steps, **kw)
        panels.setdefault("LCM", []).append((f"{steps} steps, {rows[-1]['nfe']} NFE", x))
        for sampler in ("ddim", "dpm2", "dpmpp-2m"):
            x = measure(rows, f"teacher, {sampler}", teacher, tcfg, steps, sampler=sampler, **kw)
            panels.setdefault(f"teacher, {sampler}", []).append((f"{steps} steps, {rows[-1]['nfe']} NFE", x))
    image_rows(list(panels.items()), os.path.join(args.out, "lcm_fmnist.png"))
    measure(rows, "teacher, ddim", teacher, tcfg, 50, sampler="ddim", **kw)
    measure(rows, "teacher, no guidance, ddim", teacher, tcfg, 50, sampler="ddim", **{**kw, "w": 0.0})
    for k in args.k:
        model, cfg = load_model(done[f"lcm k={k}"][0])
        for steps in (1, 4):
            measure(rows, f"k ablation, k={k}", model, cfg, steps, **kw)
    measure_lora(rows, done, args, feature_net, teacher, tcfg)
    with open(os.path.join(args.out, "lcm.json"), "w") as f:
        json.dump({"rows": rows, "train_seconds_this_call": {k: v[1] for k, v in done.items()}}, f, indent=2)
    with open(os.path.join(args.out, "lcm.md"), "w") as f:
        f.write(markdown(rows) + "\n")
    print(markdown(rows))


def measure_lora(rows, done, args, feature_net, teacher, tcfg):
    """LCM-LoRA at 4 steps on the teacher and on the style fine-tune, on the footwear classes."""
    test = FashionMNIST("test")
    shoes = test.images[torch.isin(test.labels, torch.tensor(FOOTWEAR))]
    ref = extract_features(feature_net, shoes.float() / 127.5 - 1)
    kw = dict(w=args.w, feature_net=feature_net, ref=ref, n=min(args.n, len(shoes)), out=args.out, labels=FOOTWEAR)
    _, trainable, full = save(done["lcm-lora"][0])
    print(f"[lcm] LCM-LoRA: {trainable:,} trainable of {full:,} ({100 * trainable / full:.1f}%)", file=sys.stderr)
    for name, style in (("teacher", None), ("fine-tune", done["style"][0])):
        path = os.path.join(args.out, f"lcm-lora-on-{name}")
        if not os.path.exists(os.path.join(path, "checkpoint.safetensors")):
            apply(done["lcm-lora"][0], done["teacher"][0], path, style, (1.0, 1.0))
        model, cfg = load_model(path)
        base, bcfg = (teacher, tcfg) if style is None else load_model(style)
        measure(rows, f"footwear: {name}, ddim", base, bcfg, 50, sampler="ddim", **kw)
        measure(rows, f"footwear: {name}, ddim", base, bcfg, 4, sampler="ddim", **kw)
        measure(rows, f"footwear: {name}, ddim", base, bcfg, 2, sampler="ddim", **kw)     # 4 NFE, as LCM-LoRA's
        measure(rows, f"footwear: {name} + LCM-LoRA (rank {args.rank}: {trainable:,} of {full:,})", model, cfg, 4,
                **{**kw, "w": None})


def markdown(rows):
    lines = ["| model | steps | NFE | FD | precision | recall | class match | images/s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['steps']} | {r['nfe']} | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['class_match']:.3f} | {r['images_per_sec']:.0f} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
