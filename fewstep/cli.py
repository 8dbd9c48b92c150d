"""The `fewstep` command: train, sample, demo. Every user error is one line and exit code 2."""

import argparse
import json
import os
import sys
import time

import torch

from .config import TrainConfig
from .errors import FewstepError
from .methods import METHODS

FIELDS = set(TrainConfig.__dataclass_fields__)


def parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_sets(cfg_dict, sets):
    """--set key=value: a TrainConfig field, net.X / data.X / method.X, or (bare) a method option."""
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FewstepError(f"--set expects key=value, got {item!r}; e.g. --set solver=euler or --set net.width=256")
        value = parse_value(value)
        group, dot, name = key.partition(".")
        if dot and group in ("net", "data", "method"):
            cfg_dict[f"{group}_kwargs"] = {**cfg_dict.get(f"{group}_kwargs", {}), name: value}
        elif key in FIELDS:
            cfg_dict[key] = value
        else:
            cfg_dict["method_kwargs"] = {**cfg_dict.get("method_kwargs", {}), key: value}
    return cfg_dict


def parse_taus(text):
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise FewstepError(f"--tau must be decreasing numbers separated by commas, like 80,0.8; got {text!r}") from None


def cmd_train(args):
    from .train import train
    cfg = {}
    if args.config:
        from .checkpoint import read_json
        cfg = read_json(args.config, "config file")
    cfg["method"] = args.method
    for name in ("teacher", "data", "net", "steps", "batch", "lr", "seed", "ema"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if cfg.get("teacher"):
        cfg["teacher"] = os.path.abspath(cfg["teacher"])
    cfg = TrainConfig.from_dict(apply_sets(cfg, args.set)).validate()
    t0 = time.perf_counter()
    state = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    print(f"trained {cfg.method} for {state.k} steps in {time.perf_counter() - t0:.1f}s -> {args.out}")


def cmd_sample(args):
    from .generate import generate, parse_steps
    from .metrics.toy import consistency_error, sample_distance
    from .plots import scatter_grid
    from .runs import build_dataset, load_model
    steps = parse_steps(args.steps)
    model, cfg = load_model(args.run, args.which)
    out = args.out or os.path.join(args.run, "samples")
    os.makedirs(out, exist_ok=True)
    taus = parse_taus(args.tau) if args.tau else None
    if hasattr(getattr(model, "net", None), "img_shape"):       # the 2-D metrics below do not apply
        return sample_image_run(args, model, cfg, steps, taus, out)
    data = build_dataset(cfg)
    rows, panels = [], []
    print(f"{'steps':>5} {'NFE':>5} {'sliced W2':>10} {'f error':>8} {'samples/s':>10}")
    for s in (steps if taus is None else [len(taus)]):
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        x, n_fe = generate(model, cfg, args.n, s, sampler=args.sampler, taus=taus, generator=g)
        rate = args.n / (time.perf_counter() - t0)
        swd = sample_distance(x, data, generator=torch.Generator().manual_seed(args.seed + 1))
        ferr = (consistency_error(model, data, t=cfg.sigma_max, sigma_min=cfg.sigma_min, n=1024,
                                  generator=torch.Generator().manual_seed(args.seed + 2))
                if s == 1 and hasattr(model, "boundary") and hasattr(data, "denoiser") else None)
        rows.append({"steps": s, "nfe": n_fe, "sliced_w2": swd, "f_error": ferr, "samples_per_sec": rate})
        print(f"{s:>5} {n_fe:>5} {swd:>10.4f} {'' if ferr is None else f'{ferr:.4f}':>8} {rate:>10.0f}")
        torch.save(x, os.path.join(out, f"steps{s}.pt"))
        panels.append((f"{s} steps, {n_fe} NFE", x))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=2)
    scatter_grid([("data", [("data", data.sample(args.n, torch.Generator().manual_seed(args.seed)))]),
                  (cfg.method, panels)], os.path.join(out, "samples.png"))
    print(f"wrote {out}/samples.png, metrics.json and steps*.pt")


def sample_image_run(args, model, cfg, steps, taus, out):
    """`fewstep sample` on an image run: per step count a PNG grid, the samples, NFE and images/s
    (FD and precision/recall are `fewstep eval`'s)."""
    from .evaluate import sample_images
    from .plots import image_grid
    rows = []
    print(f"{'steps':>5} {'NFE':>5} {'images/s':>10}")
    for s in (steps if taus is None else [len(taus)]):
        x, n_fe, rate = sample_images(model, cfg, args.n, s, sampler=args.sampler, taus=taus, seed=args.seed)
        rows.append({"steps": s, "nfe": n_fe, "images_per_sec": rate})
        print(f"{s:>5} {n_fe:>5} {rate:>10.1f}")
        torch.save(x, os.path.join(out, f"steps{s}.pt"))
        image_grid(x[:100], os.path.join(out, f"samples_{s}steps.png"), nrow=10)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {out}/samples_*steps.png, metrics.json and steps*.pt (FD and precision/recall: fewstep eval)")


def cmd_eval(args):
    from .evaluate import evaluate
    from .generate import parse_steps
    evaluate(args.run, parse_steps(args.steps), n=args.n, sampler=args.sampler, guidance=args.guidance,
             classifier_run=args.classifier, seed=args.seed, out=args.out, progress=not args.quiet)


def cmd_train_classifier(args):
    from .metrics.features import train_feature_classifier
    acc = train_feature_classifier(args.out, epochs=args.epochs, progress=not args.quiet)
    print(f"test accuracy {acc:.4f} -> {args.out}")


def cmd_bench(args):
    from .bench import parse_budget, parse_methods, run_bench
    budget = parse_budget(args.budget) if args.budget else None
    run_bench(args.out, budget=budget, methods=parse_methods(args.methods), n=args.n, write_docs=args.write_docs)


def cmd_edit(args):
    from .edit import run_edit
    run_edit(args)


def cmd_demo(args):
    from .demo import run_demo
    run_demo(args.out, fast=args.fast)


def build_parser():
    p = argparse.ArgumentParser(prog="fewstep", description="Few-step generative modeling: consistency "
                                "models and diffusion distillation.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a teacher (edm, ddpm) or a few-step model (cd, ct, ict, ...)")
    t.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    t.add_argument("--out", required=True, help="run folder to write (config.json, checkpoint.safetensors, metrics.jsonl)")
    t.add_argument("--teacher", help="run folder of a diffusion teacher (cd, cd-continuous)")
    t.add_argument("--data", help="dataset: gmm (default), gmm-grid, gaussian, moons, checkerboard, spiral, "
                   "fashion-mnist, folder (--set data.root=DIR)")
    t.add_argument("--net", help="raw network: mlp (default) or unet (images; --set net.config=cpu-tiny|cpu|gpu)")
    t.add_argument("--steps", type=int, help="training steps (default 4000)")
    t.add_argument("--batch", type=int, help="batch size (default 512)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    t.add_argument("--ema", type=float, help="EMA rate of the sampling model (default 0.999)")
    t.add_argument("--seed", type=int, help="seed (default 0)")
    t.add_argument("--config", help="a JSON file of TrainConfig fields; flags override it")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field or method option, e.g. --set solver=euler --set net.width=256")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample a run at several step counts; writes PNG, samples and metrics")
    s.add_argument("run", help="run folder")
    s.add_argument("--steps", default="1,2,4", help="comma-separated step counts (default 1,2,4)")
    s.add_argument("--sampler", help="consistency (CMs), heun, euler, ddim, ddpm, langevin (teachers)")
    s.add_argument("--tau", help="explicit consistency time points T,tau_1,... (decreasing)")
    s.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--which", default="ema", choices=["ema", "net", "target"], help="which weights (default ema)")
    s.add_argument("--out", help="output folder (default RUN/samples)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="image runs: FD, precision/recall and images/s against NFE")
    e.add_argument("run", help="run folder")
    e.add_argument("--steps", default="1,2,4", help="comma-separated step counts (default 1,2,4)")
    e.add_argument("--n", type=int, default=10000, help="samples per step count (default 10000)")
    e.add_argument("--sampler", help="consistency (CMs), heun, euler, ddim, ddpm (teachers)")
    e.add_argument("--guidance", type=float, default=0.0, help="guidance scale w: classifier-free for conditional "
                   "runs, or classifier guidance with --classifier")
    e.add_argument("--classifier", help="run folder of a noise-conditional classifier (fewstep train classifier ...)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="output folder (default RUN/eval)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("train-classifier", help="train the Fashion-MNIST feature classifier used by eval")
    from .metrics.features import FMNIST_CLASSIFIER
    c.add_argument("--out", default=FMNIST_CLASSIFIER)
    c.add_argument("--epochs", type=int, default=2)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_train_classifier)

    b = sub.add_parser("bench", help="Fashion-MNIST: teacher, CD, CT, iCT under one CPU budget; FD/precision/recall vs NFE")
    b.add_argument("--out", default="bench_out")
    b.add_argument("--methods", default="teacher,cd,ct,ict", help="which runs (teacher is needed by cd)")
    b.add_argument("--budget", help="training steps, e.g. teacher=1500,cd=600,ct=1500,ict=1500")
    b.add_argument("--n", type=int, default=2000, help="samples per row (default 2000)")
    b.add_argument("--write-docs", metavar="FILE", help="append the table to FILE (docs/BENCHMARKS.md)")
    b.set_defaults(func=cmd_bench)

    from .edit import TASKS
    ed = sub.add_parser("edit", help="zero-shot editing: inpaint, colorize, superres, stroke, denoise, interpolate",
                        description="Zero-shot editing with a consistency model (multistep, Algorithm 4 of the CM "
                        "paper) or a diffusion teacher (its ODE/SDE sampler). Writes OUT/TASK.png: one row per "
                        "input, [observation | results | reference].")
    ed.add_argument("task", choices=TASKS)
    ed.add_argument("run", help="run folder of an image model")
    ed.add_argument("--input", nargs="+", metavar="IMAGE", help="PNG/JPEG inputs at the run's size (superres: "
                    "the low-resolution image or a full-size one to downsample; colorize: gray or RGB; "
                    "denoise: the noisy image at noise level --sigma)")
    ed.add_argument("--from-data", type=int, metavar="N", help="use the first N test images of the run's dataset "
                    "(stroke: their coarse posterized version; denoise: noised at --sigma)")
    ed.add_argument("--mask", help="inpaint: mask image at the run's size, white = pixels to generate")
    ed.add_argument("--box", help="inpaint: the box x0,y0,x1,y1 to generate (pixels, x1/y1 exclusive)")
    ed.add_argument("--factor", type=int, default=4, help="superres: block size (default 4)")
    ed.add_argument("--sigma", type=float, help="stroke: noise level to start from (default 1.0); denoise: the "
                    "input's noise level (default 0.5), in units of the [-1, 1] pixel range")
    ed.add_argument("--add-noise", action="store_true", help="denoise: add N(0, sigma^2) noise to --input first")
    ed.add_argument("--seeds", default="0,1", help="interpolate: the two seeds of the end points (default 0,1)")
    ed.add_argument("--frames", type=int, default=8, help="interpolate: images in the strip (default 8)")
    ed.add_argument("--steps", type=int, help="sampling steps (default: a CM takes 8 for inpaint / colorize / "
                    "superres and 1 otherwise; a teacher takes 18)")
    ed.add_argument("--sampler", help="consistency (CMs), heun, euler, ddim, ddpm (teachers)")
    ed.add_argument("--samples", type=int, help="results per input (default 3; denoise 1)")
    ed.add_argument("--label", type=int, help="class label for a class-conditional run")
    ed.add_argument("--seed", type=int, default=0)
    ed.add_argument("--which", default="ema", choices=["ema", "net", "target"])
    ed.add_argument("--out", default="edit_out", help="output folder (default edit_out)")
    ed.add_argument("--score", metavar="STEPS", help="inpaint / superres on Fashion-MNIST: instead of pictures, "
                    "FD of --n edited test images for each step count, e.g. --score 1,2,4,8")
    ed.add_argument("--n", type=int, default=1000, help="--score: test images to edit (default 1000)")
    ed.set_defaults(func=cmd_edit)

    d = sub.add_parser("demo", help="the 2-D demo: teacher, CD, CT and iCT, sampled at 1/2/4 steps")
    d.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    d.add_argument("--fast", action="store_true", help="a few hundred steps per method (a smoke test)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FewstepError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()     # gloo aborts at exit when its group is left open
        return 2
    except KeyboardInterrupt:
        print("fewstep: interrupted; the last checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
