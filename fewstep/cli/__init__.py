"""The `fewstep` command: train, resume, info, sample, eval, edit, bench, compare, demo.

Every user error is one line on stderr and exit code 2; Ctrl-C is one line and exit code 130. This
module imports only the standard library at the top: torch loads inside the commands, so `fewstep
--help` answers at once and a Ctrl-C while fewstep starts is caught like any other.
"""

import argparse
import json
import os
import sys

from .. import __version__
from ..errors import FewstepError

DEBUG = "FEWSTEP_DEBUG"        # set it to see the traceback of an unexpected error
MAX_SEED = 2 ** 62


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its own are a usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_fields():
    from ..config import TrainConfig
    return set(TrainConfig.__dataclass_fields__)


SECTION_NAMES = ("run", "data", "network", "method", "optimizer", "process")


def apply_sets(cfg_dict, sets):
    """--set key=value: net.X / data.X / method.X (an option of the network, dataset or method),
    run.X / optimizer.X / process.X (a field of that section), a bare config field, or a bare method
    option. A bare name that is both a field and an option of the method must say which it means."""
    from ..config import FIELD_OF, PLACES, TrainConfig
    from ..methods import METHODS
    fields = config_fields()
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FewstepError(f"--set expects key=value, got {item!r}; e.g. --set solver=euler or --set net.width=256")
        value = parse_value(value)
        group, dot, name = key.partition(".")
        if dot and (group, name) in FIELD_OF:                  # a key as config.json's sections spell it
            cfg_dict[FIELD_OF[group, name]] = value
        elif dot and group in ("net", "network", "data", "method"):
            kwargs = {"network": "net"}.get(group, group) + "_kwargs"
            cfg_dict[kwargs] = {**cfg_dict.get(kwargs, {}), name: value}
        elif dot and group in SECTION_NAMES:
            if PLACES.get(name, (None,))[0] != group:
                valid = sorted(f for f, (s, _) in PLACES.items() if s == group)
                raise FewstepError(f"--set {key}: section {group!r} has no field {name!r}; its fields are {valid}")
            cfg_dict[name] = value
        elif key in fields:
            method = cfg_dict.get("method")
            if method in METHODS and key in TrainConfig(method=method).method_defaults():
                raise FewstepError(f"--set {key} is both a run field and an option of method {method!r}; "
                                   f"write --set method.{key}=... or --set {PLACES[key][0]}.{key}=...")
            cfg_dict[key] = value
        else:
            cfg_dict["method_kwargs"] = {**cfg_dict.get("method_kwargs", {}), key: value}
    return cfg_dict


def parse_taus(text):
    import math
    try:
        taus = [float(t) for t in text.split(",")]
    except ValueError:
        taus = None
    if not taus or not all(math.isfinite(t) and t > 0 for t in taus):
        raise FewstepError(f"--tau must be positive numbers separated by commas, largest first, like 80,0.8; got {text!r}")
    return taus

#----------------------------------------------------------------------------
# Argument types: a bad value is one line from the parser.


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**62), got {text!r}")
    return value


def finite_float(text):
    import math
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def unit_float(text):
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def folder(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string")
    return text

#----------------------------------------------------------------------------
# Commands.


def cmd_train(args):
    """A new run, or (--resume) the run in --out continued: its config.json is the base that flags change."""
    from ..checkpoint import read_json
    from ..runs import CONFIG
    from ..config import TrainConfig, is_sectioned, unsection
    cfg = {}
    stored = os.path.join(args.out, CONFIG)
    if args.resume and os.path.isfile(stored):
        cfg = TrainConfig.from_run(read_json(stored, "run config", kind=dict)).flat()
    if args.config:
        given = read_json(args.config, "config file", kind=dict)
        cfg.update(unsection(given) if is_sectioned(given) else given)
    cfg["method"] = args.method
    for name in ("teacher", "data", "net", "steps", "batch", "lr", "seed", "ema"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if cfg.get("teacher") and isinstance(cfg["teacher"], str):
        cfg["teacher"] = os.path.abspath(os.path.expanduser(cfg["teacher"]))
    run_training(apply_sets(cfg, args.set), args.out, resume=args.resume, quiet=args.quiet)


def cmd_resume(args):
    """Continue a run from its folder alone; --steps N trains it to step N (default: the steps it was given)."""
    from ..runs import CHECKPOINT, load_config
    if os.path.isfile(os.path.join(args.run, "lineage.json")) and not os.path.isfile(os.path.join(args.run, "config.json")):
        return resume_rounds(args)
    cfg = load_config(args.run).flat()
    if not os.path.isfile(os.path.join(args.run, CHECKPOINT)):
        raise FewstepError(f"{args.run} has no checkpoint to resume (it stopped before its first one); start it "
                           f"again with fewstep train {cfg['method']} --out {args.run} --resume")
    if args.steps is not None:
        cfg["steps"] = args.steps
    run_training(cfg, args.run, resume=True, quiet=args.quiet)


def resume_rounds(args):
    """`fewstep resume OUT` on progressive distillation's rounds: every round again from round 1's config,
    finished rounds kept, the interrupted one continued, the rest trained."""
    from ..checkpoint import read_json
    from ..config import TrainConfig
    first = read_json(os.path.join(args.run, "lineage.json"), "rounds list", kind=dict)["rounds"][0]["run"]
    cfg = TrainConfig.from_run(read_json(os.path.join(first, "config.json"), "run config", kind=dict)).flat()
    cfg["method_kwargs"] = {k: v for k, v in cfg["method_kwargs"].items() if k != "N"}
    if args.steps is not None:
        cfg["steps"] = args.steps
    run_training(cfg, args.run, resume=True, quiet=args.quiet)


def run_training(cfg_dict, out, resume, quiet):
    import time

    from ..config import TrainConfig
    from ..train import train
    cfg = TrainConfig.from_dict(cfg_dict).validate()
    t0 = time.perf_counter()
    if cfg.method == "pd" and "N" not in cfg.method_kwargs:          # every round, N0/2 steps down to 1
        from ..rounds import train_progressive
        state = train_progressive(cfg, out, resume=resume, progress=not quiet)
        out = os.path.join(out, "steps-1")
    else:
        state = train(cfg, out, resume=resume, progress=not quiet)
    if state.k == state.start_k:
        print(f"{out} is already trained to step {state.k} of {state.cfg.steps}; nothing to do "
              f"(train longer with: fewstep resume {out} --steps N)")
    else:
        print(f"trained {cfg.method} from step {state.start_k} to {state.k} in {time.perf_counter() - t0:.1f}s -> {out}")


def cmd_info(args):
    from ..runs import describe_run
    print(describe_run(args.run))


def cmd_methods(args):
    from ..config import method_options
    print(method_options(args.method))


def cmd_sample(args):
    import torch

    import time

    from ..evaluate import check_guidance
    from ..generate import check_sampling, generate, parse_steps
    from ..guidance import guide
    from ..metrics.toy import consistency_error, sample_distance
    from ..plots import scatter_grid
    from ..runs import build_dataset, load_model
    from ..outputs import output_dir
    steps = parse_steps(args.steps)
    taus = parse_taus(args.tau) if args.tau is not None else None
    model, cfg = load_model(args.run, args.which)
    check_sampling(cfg, args.sampler, taus, model, steps, args.gamma)
    check_guidance(args.run, model, cfg, args.guidance)
    out = output_dir(args.out, os.path.join(args.run, "samples"), ["metrics.json", "samples*.png", "steps*.pt"],
                     args.overwrite)         # after the checks: a command that cannot run leaves no folder
    if hasattr(getattr(model, "net", None), "img_shape"):       # the 2-D metrics below do not apply
        return sample_image_run(args, model, cfg, steps, taus, out)
    data, guided = build_dataset(cfg), guide(model, cfg, args.guidance)
    rows, panels = [], []
    print(f"{'steps':>5} {'NFE':>5} {'sliced W2':>10} {'f error':>8} {'samples/s':>10}")
    for s in (steps if taus is None else [len(taus)]):
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        x, n_fe = generate(guided, cfg, args.n, s, sampler=args.sampler, taus=taus, generator=g, gamma=args.gamma)
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
    import torch

    from ..evaluate import sample_images
    from ..plots import image_grid
    from ..runs import load_decoder
    decoder, rows = load_decoder(cfg), []
    print(f"{'steps':>5} {'NFE':>5} {'images/s':>10}")
    for s in (steps if taus is None else [len(taus)]):
        x, n_fe, rate = sample_images(model, cfg, args.n, s, sampler=args.sampler, taus=taus, seed=args.seed,
                                      gamma=args.gamma, decoder=decoder, guidance=args.guidance)
        rows.append({"steps": s, "nfe": n_fe, "images_per_sec": rate})
        print(f"{s:>5} {n_fe:>5} {rate:>10.1f}")
        torch.save(x, os.path.join(out, f"steps{s}.pt"))
        image_grid(x[:100], os.path.join(out, f"samples_{s}steps.png"), nrow=10)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {out}/samples_*steps.png, metrics.json and steps*.pt (FD and precision/recall: fewstep eval)")


def cmd_eval(args):
    from ..evaluate import evaluate
    from ..generate import parse_steps
    evaluate(args.run, parse_steps(args.steps), n=args.n, sampler=args.sampler, guidance=args.guidance,
             classifier_run=args.classifier, seed=args.seed, out=args.out, overwrite=args.overwrite,
             progress=not args.quiet, gamma=args.gamma)


def cmd_train_classifier(args):
    from ..metrics.features import FMNIST_CLASSIFIER, train_feature_classifier
    args.out = args.out or FMNIST_CLASSIFIER
    acc = train_feature_classifier(args.out, epochs=args.epochs, progress=not args.quiet)
    print(f"test accuracy {acc:.4f} -> {args.out}")


def cmd_bench(args):
    from .bench import parse_budget, parse_methods, run_bench
    budget = parse_budget(args.budget) if args.budget else None
    run_bench(args.out, budget=budget, methods=parse_methods(args.methods), n=args.n, write_docs=args.write_docs)


def cmd_edit(args):
    from .edit import run_edit
    run_edit(args)


def cmd_lora(args):
    from .lora import run_lora
    run_lora(args)


def cmd_demo(args):
    from .demo import run_demo
    run_demo(args.out, fast=args.fast)


def cmd_export(args):
    """A --net diffusers run as a diffusers pipeline folder (fewstep.export)."""
    from ..export import export_run
    pipeline = export_run(args.run, args.out, which=args.which, overwrite=args.overwrite)
    print(f"{type(pipeline).__name__} -> {args.out} (load it with diffusers.{type(pipeline).__name__}.from_pretrained)")


TASKS = ("inpaint", "colorize", "superres", "stroke", "denoise", "interpolate")     # fewstep edit's


def sampling_arguments(p, outputs, n):
    """What `sample` and `eval` share: the run, step counts, sampler, sample count, seed and output folder."""
    p.add_argument("run", help="run folder")
    p.add_argument("--steps", default="1,2,4", help="comma-separated step counts (default 1,2,4)")
    p.add_argument("--sampler", help="consistency (CMs), gamma (CTM), lcm (LCM), heun, euler, ddim, ddpm, dpm2, dpmpp-2m, "
                   "langevin (teachers)")
    p.add_argument("--gamma", type=unit_float, default=0.0, help="CTM's gamma-sampling: 0 deterministic (default), "
                   "1 = consistency sampling")
    p.add_argument("--guidance", type=finite_float, default=0.0, help="guidance scale w: classifier-free for "
                   "conditional runs, an input of an LCM run, or classifier guidance with --classifier (eval)")
    p.add_argument("--n", type=positive_int, default=n, help=f"samples per step count (default {n})")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", help=f"output folder (default: a new RUN/{outputs}/NNN)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs already in --out")


def build_parser():
    """The parser, built without importing torch (so --help and --version answer at once)."""
    p = Parser(prog="fewstep", description="Few-step generative modeling: consistency models and diffusion "
               "distillation. `fewstep COMMAND --help` describes each command.")
    p.add_argument("--version", action="version", version=f"fewstep {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a teacher (edm, ddpm) or a few-step model (cd, ct, ict, kd, pd, ...)",
                       description="Train a run into --out: config.json, checkpoint.safetensors, metrics.jsonl, "
                       "tensorboard/. `fewstep methods` lists each method's options and defaults.")
    t.add_argument("method", help="the training method: edm, ddpm (teachers), cd, ct, ict, cd-continuous, "
                   "ct-continuous (consistency), ctm (trajectory), kd, pd, rf, reflow, dmd, sds, add (distillation), classifier, vae (latent autoencoder); "
                   "`fewstep methods` lists each with its options. pd without --set N runs every round into "
                   "OUT/steps-N")
    t.add_argument("--out", required=True, type=folder, help="run folder to write (new or empty; with --resume, "
                   "the run to continue)")
    t.add_argument("--teacher", help="run folder of a diffusion teacher (cd, cd-continuous, ctm, kd, pd, reflow, dmd, "
                   "sds, add; for reflow and kd also a rectified flow)")
    t.add_argument("--data", help="dataset: gmm (default), gmm-grid, gaussian, moons, checkerboard, spiral, "
                   "fashion-mnist, fashion-mnist-rgb, folder (--set data.root=DIR), latents (--set data.autoencoder=AE)")
    t.add_argument("--net", help="raw network: mlp (default) or unet (images; default size cpu-tiny, 0.34M "
                   "parameters at 28 px; --set net.config=cpu or gpu for larger), or diffusers (a diffusers U-Net: "
                   "--set net.path=FOLDER or net.config={...}; pip install 'fewstep[diffusers]')")
    t.add_argument("--steps", type=positive_int, help="training steps (default 4000)")
    t.add_argument("--batch", type=positive_int, help="batch size (default 512 for 2-D data, 64 for images)")
    t.add_argument("--lr", type=finite_float, help="learning rate (default 1e-3; the optimizer: --set optimizer=adam|adamw|radam)")
    t.add_argument("--ema", type=finite_float, help="EMA rate of the sampling model (default 0.999)")
    t.add_argument("--seed", type=seed_int, help="seed (default 0)")
    t.add_argument("--config", help="a JSON file of config fields; flags override it")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field or method option, e.g. --set solver=euler --set net.width=256")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                   "(its config.json supplies every option not given; a run without a checkpoint starts over)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue a run from its folder alone",
                       description="Continue a run from its last checkpoint with the config it was started with; "
                       "the result equals an uninterrupted run bit for bit.")
    r.add_argument("run", help="run folder")
    r.add_argument("--steps", type=positive_int, help="train to this step (default: the run's own steps)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=cmd_resume)

    i = sub.add_parser("info", help="a run's config, steps done and last metrics",
                       description="Print what a run folder holds: method, data, network, the resolved config, "
                       "the checkpoint's step and parameter count, the last logged metrics and earlier outputs.")
    i.add_argument("run", help="run folder")
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("methods", help="the training methods and their options with defaults",
                       description="Each training method with the seed it implements and its options "
                       "(set with --set NAME=VALUE) with their defaults.")
    m.add_argument("method", nargs="?", help="only this method")
    m.set_defaults(func=cmd_methods)

    s = sub.add_parser("sample", help="sample a run at several step counts; writes PNG, samples and metrics",
                       description="Sample a run at each step count: a PNG grid, the samples (.pt) and metrics.json "
                       "(2-D runs: sliced W2 and the 1-step error to the true consistency function; image runs: "
                       "NFE and images/s). Writes a new folder RUN/samples/NNN unless --out is given.")
    sampling_arguments(s, "samples", n=2000)
    s.add_argument("--tau", help="consistency models: explicit time points T,tau_1,... (decreasing)")
    s.add_argument("--which", default="ema", choices=["ema", "net", "target"], help="which weights (default ema)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="image runs: FD, precision/recall and images/s against NFE",
                       description="Measure an image run at each step count: FD and precision/recall in the shipped "
                       "Fashion-MNIST classifier's features against the test split, images/s, grids and a FD-vs-NFE "
                       "plot. Writes a new folder RUN/eval/NNN unless --out is given.")
    sampling_arguments(e, "eval", n=10000)
    e.add_argument("--classifier", help="run folder of a noise-conditional classifier (fewstep train classifier ...)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("train-classifier", help="train the Fashion-MNIST feature classifier used by eval",
                       description="Train the feature classifier whose features FD and precision/recall use.")
    c.add_argument("--out", type=folder, help="where to write it (default: the shipped fewstep/assets file)")
    c.add_argument("--epochs", type=positive_int, default=2)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_train_classifier)

    b = sub.add_parser("bench", help="Fashion-MNIST: teacher, CD, CT, iCT under one CPU budget; FD/precision/recall vs NFE",
                       description="Train an EDM teacher, CD from it, CT and iCT (cpu-tiny U-Net, batch 64) under "
                       "one stated budget and measure each against NFE: FD, precision/recall, images/s, s/step and "
                       "peak memory. Writes OUT/bench.md, bench.json, fd_vs_nfe.png and grids; re-running reuses "
                       "finished runs.")
    b.add_argument("--out", default="bench_out", type=folder, help="output folder (default bench_out)")
    b.add_argument("--methods", default="teacher,cd,ct,ict", help="which runs (teacher is needed by cd)")
    b.add_argument("--budget", help="training steps, e.g. teacher=1500,cd=600,ct=1500,ict=1500")
    b.add_argument("--n", type=positive_int, default=2000, help="samples per row (default 2000)")
    b.add_argument("--write-docs", metavar="FILE", help="append the table to FILE (docs/BENCHMARKS.md)")
    b.set_defaults(func=cmd_bench)

    from .compare import add_parser as add_compare      # fewstep compare: its arguments live in cli/compare.py
    add_compare(sub)

    lo = sub.add_parser("lora", help="LoRA adapters (LCM-LoRA, style): save one alone, apply and combine them",
                        description="save: write an lcm-lora or lora run's adapter alone as safetensors, with its "
                        "trainable/full parameter counts. apply: a new run folder with an lcm-lora run's acceleration "
                        "adapter on another base network (the teacher, or a full fine-tune of it) and optionally a "
                        "style run's adapter, combined as lambda_1 tau_1 + lambda_2 tau_2 and merged (seed 004).")
    lo.add_argument("action", choices=["save", "apply"])
    lo.add_argument("run", help="save: an lcm-lora or lora run; apply: the lcm-lora run")
    lo.add_argument("--out", help="save: the adapter file (default RUN/adapter.safetensors); apply: the new run folder")
    lo.add_argument("--base", help="apply: the run whose network weights the adapters go on (the teacher or a fine-tune)")
    lo.add_argument("--style", help="apply: a lora (style) run whose adapter is added")
    lo.add_argument("--weights", help="apply: lambda_1,lambda_2 for the acceleration and style adapters (default 1,1)")
    lo.set_defaults(func=cmd_lora)

    ed = sub.add_parser("edit", help="zero-shot editing: inpaint, colorize, superres, stroke, denoise, interpolate",
                        description="Zero-shot editing with a consistency model (multistep, Algorithm 4 of the CM "
                        "paper) or a diffusion teacher (its ODE/SDE sampler). Writes OUT/TASK.png: one row per "
                        "input, [observation | results | reference]; OUT is a new RUN/edit/NNN unless --out is given.")
    ed.add_argument("task", choices=TASKS)
    ed.add_argument("run", help="run folder of an image model")
    ed.add_argument("--input", nargs="+", metavar="IMAGE", help="PNG/JPEG inputs at the run's size (superres: "
                    "the low-resolution image or a full-size one to downsample; colorize: gray or RGB; "
                    "denoise: the noisy image at noise level --sigma)")
    ed.add_argument("--from-data", type=positive_int, metavar="N", help="use the first N test images of the run's "
                    "dataset (stroke: their coarse posterized version; denoise: noised at --sigma)")
    ed.add_argument("--mask", help="inpaint: mask image at the run's size, white = pixels to generate")
    ed.add_argument("--box", help="inpaint: the box x0,y0,x1,y1 to generate (pixels, x1/y1 exclusive)")
    ed.add_argument("--factor", type=positive_int, default=4, help="superres: block size (default 4)")
    ed.add_argument("--sigma", type=finite_float, help="stroke: noise level to start from (default 1.0); denoise: "
                    "the input's noise level (default 0.5), in units of the [-1, 1] pixel range")
    ed.add_argument("--add-noise", action="store_true", help="denoise: add N(0, sigma^2) noise to --input first")
    ed.add_argument("--seeds", default="0,1", help="interpolate: the two seeds of the end points (default 0,1)")
    ed.add_argument("--frames", type=int, default=8, help="interpolate: images in the strip (default 8)")
    ed.add_argument("--steps", type=int, help="sampling steps (default: a CM takes 8 for inpaint / colorize / "
                    "superres and 1 otherwise; a teacher takes 18)")
    ed.add_argument("--sampler", help="consistency (CMs), gamma (CTM, gamma = 0), heun, euler, ddim, ddpm (teachers)")
    ed.add_argument("--samples", type=int, help="results per input (default 3; denoise 1)")
    ed.add_argument("--label", type=int, help="class label for a class-conditional run")
    ed.add_argument("--seed", type=seed_int, default=0)
    ed.add_argument("--which", default="ema", choices=["ema", "net", "target"])
    ed.add_argument("--out", help="output folder (default: a new RUN/edit/NNN)")
    ed.add_argument("--overwrite", action="store_true", help="replace this task's outputs already in --out")
    ed.add_argument("--score", metavar="STEPS", help="inpaint / superres on Fashion-MNIST: instead of pictures, "
                    "FD of --n edited test images for each step count, e.g. --score 1,2,4,8")
    ed.add_argument("--n", type=positive_int, default=1000, help="--score: test images to edit (default 1000)")
    ed.set_defaults(func=cmd_edit)

    x = sub.add_parser("export", help="a --net diffusers run as a diffusers pipeline folder (DDPM, consistency)",
                       description="Write RUN (trained with --net diffusers) to OUT as a diffusers pipeline: unet/, "
                       "scheduler/, model_index.json. A ddpm run loads with DDPMPipeline (or DDIMPipeline), a cd, ct "
                       "or ict run with ConsistencyModelPipeline. Needs pip install 'fewstep[diffusers]'.")
    x.add_argument("run", help="run folder")
    x.add_argument("out", type=folder, help="the pipeline folder to write")
    x.add_argument("--which", default="ema", choices=["ema", "net"], help="the weights to export (default ema)")
    x.add_argument("--overwrite", action="store_true", help="replace a pipeline already in OUT")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="the 2-D demo: teacher, CD, CT and iCT, sampled at 1/2/4 steps",
                       description="Train an EDM teacher, CD, CT and iCT on the 8-mode Gaussian mixture and sample "
                       "each at 1, 2 and 4 steps: OUT/demo.png and OUT/metrics.md (sliced W2 to data, 1-step error "
                       "to the true consistency function). Re-running reuses finished runs.")
    d.add_argument("--out", default="demo_out", type=folder, help="output folder (default demo_out)")
    d.add_argument("--fast", action="store_true", help="a few hundred steps per method (a smoke test)")
    d.set_defaults(func=cmd_demo)
    return p


class _RepeatedInterrupt:
    """Ctrl-C raises KeyboardInterrupt, and again every half second until fewstep handles it: a C extension
    that is being imported when the signal lands (numpy under torch) can turn the first one into an ImportError
    that its importer catches, and the command would run on as if nothing had happened."""

    def __enter__(self):
        import signal
        import threading
        self.active = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
                       and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        _RepeatedInterrupt.fired = False
        if self.active:
            self.saved = signal.signal(signal.SIGINT, self._raise), signal.signal(signal.SIGALRM, self._raise)
        return self

    fired = False               # a Ctrl-C came: whatever error follows is its consequence

    @classmethod
    def _raise(cls, signum, frame):
        import signal
        cls.fired = True
        importing = any("importlib" in f.f_code.co_filename for f in _frames(frame))
        signal.setitimer(signal.ITIMER_REAL, *((0.5, 0.5) if importing else (0, 0)))   # repeat only while importing
        raise KeyboardInterrupt

    def stop(self):
        if self.active:
            import signal
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGINT, self.saved[0])
            signal.signal(signal.SIGALRM, self.saved[1])
            self.active = False

    def __exit__(self, *exc):
        self.stop()


def _frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def main(argv=None):
    """Run one command; returns the exit code (0, 2 for a user error, 130 for Ctrl-C, 1 for a bug)."""
    with _RepeatedInterrupt() as interrupt:
        return _main(argv, interrupt)


def _main(argv, interrupt):
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        args.func(args)
    except FewstepError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return _close(2)
    except KeyboardInterrupt as e:
        interrupt.stop()
        print(f"fewstep: {e.args[0] if e.args else 'interrupted'}", file=sys.stderr)
        return _close(130)
    except BrokenPipeError:         # the reader of our output went away (| head): nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _close(1)
    except OSError as e:            # a full, read-only or missing place that no command foresaw
        where = f" ({e.filename})" if e.filename else ""
        print(f"fewstep: error: {e.strerror or e}{where}; free space or choose a writable place", file=sys.stderr)
        return _close(2)
    except Exception as e:
        if _RepeatedInterrupt.fired:        # an import that a Ctrl-C broke half way
            interrupt.stop()
            print("fewstep: interrupted", file=sys.stderr)
            return _close(130)
        if os.environ.get(DEBUG):
            raise
        print(f"fewstep: internal error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              f"(a bug: please report it with the traceback that {DEBUG}=1 prints)", file=sys.stderr)
        return _close(1)
    return _close(0)


def _close(code):
    """gloo may abort a process at exit ("terminate called without an active exception") when its group is
    left open, or closed while another rank still talks to it: after a success every rank meets at a
    barrier first (a failed command does not: its peer may be gone), then the group is closed."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)      # gloo's threads can still abort in C++ teardown at exit; every file is written by now
    return code


if __name__ == "__main__":
    sys.exit(main())
