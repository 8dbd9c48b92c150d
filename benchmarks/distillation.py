"""The distillation families of seed 003 against CD under one budget, on the 2-D mixture with unequal mode
weights (3 seeds) and on Fashion-MNIST (one seed): the numbers of docs/BENCHMARKS.md.

    python benchmarks/distillation.py 2d --out bench_distill            # about 30 min on one core
    python benchmarks/distillation.py fmnist --out bench_distill        # about an hour on one core

Every run is a plain fewstep run under OUT (finished runs are reused, so the command resumes). Writes
OUT/<data>.md, OUT/<data>.json and a picture of samples per method.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

import torch

from fewstep.compare import MIXTURE, WEIGHTS, sampled_run
from fewstep.config import TrainConfig
from fewstep.data import make_dataset
from fewstep.generate import generate
from fewstep.metrics.flow import straightness
from fewstep.metrics.toy import mode_stats, sample_distance
from fewstep.plots import scatter_grid
from fewstep.rounds import train_progressive
from fewstep.runs import load_model
from fewstep.train import train


def plan(budget, pairs, pair_steps):
    """name -> (method, teacher name or None, method options, steps, sampled step counts). Every few-step
    method trains `budget` steps from the same teacher; PD spends them over its rounds."""
    pairs_kw = {"pairs": pairs, "pair_steps": pair_steps}
    return {
        "teacher": ("edm", None, {}, 2 * budget, None),
        "cd": ("cd", "teacher", {"N": 18}, budget, (1, 2, 4)),
        "kd": ("kd", "teacher", pairs_kw, budget, (1,)),
        "pd": ("pd", "teacher", {"N0": 16}, budget // 4, (1, 2, 4)),
        "rf": ("rf", None, {}, budget, (1, 2, 4)),
        "reflow1": ("reflow", "teacher", pairs_kw, budget, (1, 2, 4)),
        "reflow2": ("reflow", "reflow1", {**pairs_kw, "pair_steps": 2 * pair_steps}, budget, (1, 2, 4)),
        "reflow3": ("reflow", "reflow2", {**pairs_kw, "pair_steps": 2 * pair_steps}, budget, (1, 2, 4)),
        "reflow1+kd": ("kd", "reflow1", {**pairs_kw, "pair_steps": 2 * pair_steps}, budget // 2, (1,)),
        "reflow2+kd": ("kd", "reflow2", {**pairs_kw, "pair_steps": 2 * pair_steps}, budget // 2, (1,)),
        "reflow3+kd": ("kd", "reflow3", {**pairs_kw, "pair_steps": 2 * pair_steps}, budget // 2, (1,)),
        "dmd": ("dmd", "teacher", pairs_kw, budget, (1,)),
        "dmd, no regression": ("dmd", "teacher", {"reg_weight": 0.0, "pair_steps": pair_steps}, budget, (1,)),
        "sds": ("sds", "teacher", {}, budget, (1,)),
        "sds, batch estimator": ("sds", "teacher", {"estimator": "batch"}, budget, (1,)),
        "add": ("add", "teacher", {}, budget, (1, 2, 4)),
    }


def folder(name):
    return name.replace(", ", "-").replace(" ", "-").replace("+", "-")


def train_all(out, base, runs, names):
    """Train (or reuse) each run; returns name -> (run folder, training seconds)."""
    done = {}
    for name in names:
        method, teacher, options, steps, _ = runs[name]
        path = os.path.join(out, folder(name))
        cfg = TrainConfig(method=method, teacher=done[teacher][0] if teacher else None, method_kwargs=options,
                          steps=steps, **base)
        t0 = time.perf_counter()
        if method == "pd":
            train_progressive(cfg, path, resume=True, progress=False)
        else:
            train(cfg, path, resume=True, progress=False)
        done[name] = (path, time.perf_counter() - t0)
        print(f"[distill] {name}: {steps} steps, {done[name][1]:.0f}s", file=sys.stderr, flush=True)
    return done


def measure_2d(out, seeds, budget, n, pairs, pair_steps):
    runs = plan(budget, pairs, pair_steps)
    data = make_dataset("gmm", weights=WEIGHTS)
    rows, pictures = {}, {}
    for seed in seeds:
        base = dict(**MIXTURE, seed=seed, log_every=250, ckpt_every=budget)
        done = train_all(os.path.join(out, f"2d-seed{seed}"), base, runs, list(runs))
        for name, (method, _, _, _, step_counts) in runs.items():
            for steps in step_counts or ():
                model, cfg = load_model(sampled_run(done[name][0], method, steps))
                x, nfe = generate(model, cfg, n, steps, generator=torch.Generator().manual_seed(100 + seed))
                row = {"swd": sample_distance(x, data, generator=torch.Generator().manual_seed(7)),
                       **mode_stats(x, data), "nfe": nfe}
                if method in ("rf", "reflow"):
                    row["straightness"] = straightness(model, torch.randn(2000, 2, generator=torch.Generator().manual_seed(3)))
                rows.setdefault((name, steps), []).append(row)
                if seed == seeds[0]:
                    pictures.setdefault(name, []).append((f"{steps} step{'s' * (steps > 1)}", x))
        model, cfg = load_model(done["teacher"][0])
        for sampler, steps in (("heun", 18), ("euler", 4)):
            x, nfe = generate(model, cfg, n, steps, sampler=sampler, generator=torch.Generator().manual_seed(100 + seed))
            rows.setdefault((f"teacher, {sampler}", steps), []).append(
                {"swd": sample_distance(x, data, generator=torch.Generator().manual_seed(7)), **mode_stats(x, data),
                 "nfe": nfe, "straightness": straightness(model, torch.randn(2000, 2, generator=torch.Generator().manual_seed(3)))})
    panels = [("data", [("data", data.sample(n, torch.Generator().manual_seed(0)))])] + list(pictures.items())
    scatter_grid(panels, os.path.join(out, "2d.png"))
    return rows


def plan_fmnist(budget, pairs):
    pairs_kw = {"pairs": pairs, "pair_steps": 18}
    return {
        "teacher": ("edm", None, {}, 4 * budget, None),
        "cd": ("cd", "teacher", {"N": 18, "distance": "pseudo-huber"}, budget, (1, 2, 4)),
        "kd": ("kd", "teacher", pairs_kw, budget, (1,)),
        "pd": ("pd", "teacher", {"N0": 16}, budget // 4, (1, 2, 4)),
        "reflow1": ("reflow", "teacher", pairs_kw, budget, (1, 2, 4)),
        "dmd": ("dmd", "teacher", pairs_kw, budget, (1,)),
        "sds": ("sds", "teacher", {}, budget, (1,)),
        "add": ("add", "teacher", {}, budget, (1, 2, 4)),
        "ctm": ("ctm", "teacher", {"lambda_dsm": 1.0}, budget, (1, 2, 4, 8)),
        "ctm, DSM 0.1": ("ctm", "teacher", {"lambda_dsm": 0.1}, budget, (1, 2, 4, 8)),
        "ctm, no DSM": ("ctm", "teacher", {"lambda_dsm": 0.0}, budget, (1, 2, 4, 8)),
    }


def measure_fmnist(out, budget, n, pairs, names=None):
    from fewstep.evaluate import crop_to, reference_features, sample_images
    from fewstep.metrics.fd import extract_features, fd_from_features
    from fewstep.metrics.features import load_feature_net
    from fewstep.metrics.precision_recall import precision_recall
    from fewstep.plots import image_grid
    runs = plan_fmnist(budget, pairs)
    if names:                                   # a subset (the teacher always: the others need it)
        runs = {k: v for k, v in runs.items() if k == "teacher" or k in names}
    base = dict(data="fashion-mnist", net="unet", net_kwargs={"config": "cpu-tiny"}, batch=64, lr=5e-4,
                log_every=50, ckpt_every=250)
    done = train_all(os.path.join(out, "fmnist"), base, runs, list(runs))
    feature_net = load_feature_net()
    ref = reference_features(feature_net)
    rows = {}
    samplings = [(name, method, None, steps) for name, (method, _, _, _, counts) in runs.items() for steps in counts or ()]
    samplings += [("teacher, heun", "edm", "heun", 18), ("teacher, euler", "edm", "euler", 4)]
    samplings += [(f"{name}, Heun on g(x, t, t)", "ctm", "heun", 18) for name in runs if runs[name][0] == "ctm"]
    for name, method, sampler, steps in samplings:
        path = done["teacher" if name.startswith("teacher") else name.split(", Heun")[0]][0]
        model, cfg = load_model(sampled_run(path, method, steps))
        x, nfe, rate = sample_images(model, cfg, n, steps, sampler=sampler)
        feats = extract_features(feature_net, crop_to(x, 28))
        rows[name, steps] = [{"fd": fd_from_features(feats, ref), **precision_recall(ref, feats, k=3), "nfe": nfe,
                              "images_per_sec": rate, "train_s": done["teacher" if name.startswith("teacher") else name.split(", Heun")[0]][1]}]
        image_grid(x[:100], os.path.join(out, f"fmnist_{folder(name)}_{steps}.png"), nrow=10)
        print(f"[distill] {name} {steps} steps: FD {rows[name, steps][0]['fd']:.2f}", file=sys.stderr, flush=True)
    return rows


def markdown_fmnist(rows):
    lines = ["| model | steps | NFE | FD | precision | recall | images/s | train s (this call) |", "|---|---|---|---|---|---|---|---|"]
    for (name, steps), (r,) in rows.items():
        lines.append(f"| {name} | {steps} | {r['nfe']} | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['images_per_sec']:.0f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def plan_ctm(budget):
    """CTM against CD at the same budget on the 2-D mixture, with and without its DSM and GAN terms."""
    return {
        "teacher": ("edm", None, {}, 2 * budget, None),
        "cd": ("cd", "teacher", {"N": 18}, budget, (1, 2, 4, 8)),
        "ctm": ("ctm", "teacher", {"lambda_dsm": 1.0}, budget, (1, 2, 4, 8)),
        "ctm, local (max_solver_steps=1)": ("ctm", "teacher", {"max_solver_steps": 1, "lambda_dsm": 1.0}, budget,
                                            (1, 2, 4, 8)),
        "ctm, DSM 0.1": ("ctm", "teacher", {"lambda_dsm": 0.1}, budget, (1, 2, 4, 8)),
        "ctm, no DSM": ("ctm", "teacher", {"lambda_dsm": 0.0}, budget, (1, 2, 4, 8)),
        "ctm, GAN 0.1": ("ctm", "teacher", {"gan_weight": 0.1, "lambda_dsm": 1.0}, budget, (1, 2, 4, 8)),
    }


def measure_ctm(out, seeds, budget, n):
    """CTM's gamma = 0 at 1..8 steps, CD's Algorithm 1 at the same steps, and g(x, t, t) with Heun at 35 NFE."""
    runs = plan_ctm(budget)
    data = make_dataset("gmm", weights=WEIGHTS)
    rows, pictures = {}, {}
    for seed in seeds:
        base = dict(**MIXTURE, seed=seed, log_every=250, ckpt_every=budget)
        done = train_all(os.path.join(out, f"2d-seed{seed}"), base, runs, list(runs))
        for name, (method, _, _, _, counts) in runs.items():
            model, cfg = load_model(done[name][0])
            samplings = [(f"{name}", None, steps) for steps in counts or ()]
            if method in ("ctm", "edm"):
                samplings.append((f"{name}, Heun on g(x, t, t)" if method == "ctm" else "teacher, Heun", "heun", 18))
            for label, sampler, steps in samplings:
                x, nfe = generate(model, cfg, n, steps, sampler=sampler, generator=torch.Generator().manual_seed(100 + seed))
                rows.setdefault((label, steps), []).append(
                    {"swd": sample_distance(x, data, generator=torch.Generator().manual_seed(7)), **mode_stats(x, data),
                     "nfe": nfe})
                if seed == seeds[0] and sampler is None:
                    pictures.setdefault(name, []).append((f"{steps} step{'s' * (steps > 1)}", x))
        teacher_calls = {name: ctm_teacher_calls(runs[name][2]) for name in runs if runs[name][0] == "ctm"}
        print(f"[distill] CTM teacher calls per sample: {teacher_calls}", file=sys.stderr, flush=True)
    panels = [("data", [("data", data.sample(n, torch.Generator().manual_seed(0)))])] + list(pictures.items())
    scatter_grid(panels, os.path.join(out, "ctm_2d.png"))
    return rows


def ctm_teacher_calls(options):
    from fewstep.methods.trajectory import ConsistencyTrajectory
    return round(ConsistencyTrajectory(None, **{k: v for k, v in options.items() if k == "max_solver_steps"}).teacher_calls(), 1)


def summarise(rows):
    """'mean ± sd' over seeds per metric."""
    table = []
    for (name, steps), rs in rows.items():
        entry = {"model": name, "steps": steps, "nfe": rs[0]["nfe"]}
        for key in ("swd", "modes_hit", "weight_tv", "straightness"):
            values = [r[key] for r in rs if key in r]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                entry[key] = (statistics.mean(values), sd)
        table.append(entry)
    return table


def markdown(table):
    lines = ["| model | steps | NFE | sliced W2 | modes hit | mode-weight TV | straightness |", "|---|---|---|---|---|---|---|"]
    fmt = lambda e, k, p: f"{e[k][0]:.{p}f} ± {e[k][1]:.{p}f}" if k in e else ""         # noqa: E731
    for e in table:
        lines.append(f"| {e['model']} | {e['steps']} | {e['nfe']} | {fmt(e, 'swd', 3)} | {fmt(e, 'modes_hit', 2)} | "
                     f"{fmt(e, 'weight_tv', 3)} | {fmt(e, 'straightness', 3)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", choices=["2d", "fmnist", "ctm"])
    p.add_argument("--out", default="bench_distill")
    p.add_argument("--budget", type=int, default=2000, help="training steps of each few-step method")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n", type=int, default=4000, help="samples per row")
    p.add_argument("--pairs", type=int, default=8192)
    p.add_argument("--pair-steps", type=int, default=18)
    p.add_argument("--methods", help="fmnist: only these runs (names of the plan separated by commas without a "
                   "space), e.g. 'cd,ctm,ctm, no DSM'")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.data == "fmnist":
        rows = measure_fmnist(args.out, args.budget, args.n, args.pairs, args.methods and re.split(r",(?! )", args.methods))
        only = f" --methods '{args.methods}'" if args.methods else ""
        text = (f"Command: `python benchmarks/distillation.py fmnist --out {args.out} --budget {args.budget} --n {args.n} "
                f"--pairs {args.pairs}{only}`; {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores, torch "
                f"{torch.__version__}, {torch.get_num_threads()} threads; {(time.perf_counter() - t0) / 60:.0f} min.\n\n"
                f"{markdown_fmnist(rows)}\n")
        with open(os.path.join(args.out, "fmnist_ctm.md" if args.methods else "fmnist.md"), "w") as f:
            f.write(text)
        return print(text)
    if args.data == "ctm":
        table = summarise(measure_ctm(args.out, [int(s) for s in args.seeds.split(",")], args.budget, args.n))
        text = (f"Command: `python benchmarks/distillation.py ctm --out {args.out} --budget {args.budget} --seeds "
                f"{args.seeds} --n {args.n}`; {time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores, torch "
                f"{torch.__version__}, {torch.get_num_threads()} threads; {(time.perf_counter() - t0) / 60:.0f} min.\n\n"
                f"{markdown(table)}\n")
        with open(os.path.join(args.out, "ctm.md"), "w") as f:
            f.write(text)
        return print(text)
    rows = measure_2d(args.out, [int(s) for s in args.seeds.split(",")], args.budget, args.n, args.pairs, args.pair_steps)
    table = summarise(rows)
    text = (f"Command: `python benchmarks/distillation.py 2d --out {args.out} --budget {args.budget} --seeds {args.seeds} "
            f"--n {args.n} --pairs {args.pairs} --pair-steps {args.pair_steps}`; {time.strftime('%Y-%m-%d')}; "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"{(time.perf_counter() - t0) / 60:.0f} min.\n\n{markdown(table)}\n")
    with open(os.path.join(args.out, "2d.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "2d.json"), "w") as f:
        json.dump(table, f, indent=2)
    print(text)


if __name__ == "__main__":
    main()
