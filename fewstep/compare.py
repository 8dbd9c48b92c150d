"""`fewstep compare`: every few-step method trained and measured under one budget rule, in one resumable run
(issue 14; the methods of seeds 000, 003 and 004 side by side, as seed 003's comparison tables lay them out).

Budget rule: one EDM teacher trained 2B steps; every few-step method B steps from it (or from data), with the
same batch, learning rate and network; progressive distillation spends its B over its rounds; the teacher
pairs of KD, reflow and DMD are made once per teacher and their time is added to each of them; LCM, which
needs a VP (DDPM) teacher, gets one of its own, trained 2B steps too.

    OUT/2d/seedS/NAME/       one plain fewstep run per method and seed (2-D mixture, mode weights 1..8)
    OUT/fmnist/NAME/         one per method (Fashion-MNIST, cpu-tiny U-Net, one seed)
    OUT/.../logs/NAME.log    what each training process printed (and pairs-*.json: the pairs' cost)
    OUT/compare.md           the tables, headed by the command, machine, date and the budget rule
    OUT/compare.json         the same rows, and every run's seconds and peak memory
    OUT/2d_samples.png, OUT/fmnist_samples.png, OUT/fmnist_fd_vs_nfe.png

Each run trains in a child process, so that its seconds and peak memory are its own: the peak resident set
that os.wait4 reports for the child on CPU, torch.cuda.max_memory_allocated inside it on CUDA. A finished run
(its NAME/compare_run.json matches the config) is reused without starting a process; an unfinished one
resumes from its checkpoint.
"""

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from .checkpoint import load_checkpoint, make_dir, read_json, write_json, write_text
from .config import TrainConfig
from .runs import CHECKPOINT, CONFIG, changed_fields, read_metrics
from .data.images import FASHION_MNIST_ROOT
from .errors import FewstepError

WEIGHTS = list(range(1, 9))                         # mode weights 1..8 (the smallest mode holds 1/36)
MIXTURE = dict(data="gmm", data_kwargs={"weights": WEIGHTS})
FEW = (1, 2, 4, 8)                                  # the few-step counts every method is measured at
DATASETS = ("2d", "fmnist")
RECORD = "compare_run.json"                         # in a finished run's folder: its config, seconds, memory


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the comparison and the rows it gives."""
    method:   str                   # A key of fewstep.methods.METHODS.
    teacher:  str = None            # Name of the run it distills (None: trained from data).
    options:  dict = dataclasses.field(default_factory=dict)   # Method options (method_kwargs).
    steps:    int = 0               # Training steps (PD: per round).
    sampling: tuple = ()            # (sampler or None for the run's own, step counts): its rows.


# Registered methods that are not few-step methods of their own, and why they are left out of the tables.
NOT_COMPARED = {
    "edm": "the teacher: its ODE and SDE samplers are rows",
    "ddpm": "LCM's VP teacher, trained for lcm",
    "lcm-lora": "LCM's loss on a LoRA adapter of the teacher: a parameter-efficient lcm, not another method",
    "lora": "a style fine-tune of a teacher, not a few-step sampler",
    "classifier": "a guidance classifier, not a generator",
    "vae": "an autoencoder for latent spaces, not a generator",
}

#----------------------------------------------------------------------------
# Settings and plans.


@dataclasses.dataclass
class Settings:
    """What one call compares: the budget B and how much is measured."""
    budget:     int = 2000          # B: training steps of each few-step method (the teacher's: 2B).
    seeds:      tuple = (0, 1, 2)   # 2-D: a full set of runs per seed; Fashion-MNIST uses the first.
    n_2d:       int = 4000          # 2-D samples per row and seed.
    n_images:   int = 2000          # Fashion-MNIST samples per row.
    n_ref:      int = 10000         # Fashion-MNIST test images the features of the samples are compared to.
    pairs:      int = 4096          # Teacher pairs of KD, reflow and DMD.
    pair_steps: int = 18            # Heun steps per pair (35 NFE).
    fast:       bool = False        # Tiny networks and batches: the smoke test.


FAST = dict(budget=20, seeds=(0,), n_2d=500, n_images=100, n_ref=1000, pairs=256, pair_steps=6, fast=True)


def make_settings(fast=False, **given):
    """Settings from the defaults (or --fast's), with every value given that is not None."""
    values = {**(FAST if fast else {}), **{k: v for k, v in given.items() if v is not None}}
    return Settings(**values)


def base_config(data, s):
    """TrainConfig fields every run of a dataset shares: the data, network, batch and learning rate."""
    ckpt = dict(log_every=max(s.budget // 10, 1), ckpt_every=max(s.budget // 4, 1))
    if data == "2d":
        net = {"width": 32, "depth": 1} if s.fast else {}
        return dict(**MIXTURE, net="mlp", net_kwargs=net, batch=128 if s.fast else 512, lr=1e-3, **ckpt)
    net = {"config": "cpu-tiny", **({"model_channels": 8} if s.fast else {})}
    return dict(data="fashion-mnist", net="unet", net_kwargs=net, batch=8 if s.fast else 64, lr=5e-4, **ckpt)


SD_BETAS = {"schedule": "scaled-linear", "beta_start": 0.00085, "beta_end": 0.012}    # LCM's own default process
PD_N0 = 16                          # PD's rounds: 16 -> 8 -> 4 -> 2 -> 1 steps


def plan(data, s):
    """name -> Run, teachers first. Options are the library's defaults except where a small budget or the
    data needs the settings fewstep's demo (2-D) and bench (Fashion-MNIST) use."""
    B, images = s.budget, data == "fmnist"
    pairs = {"pairs": s.pairs, "pair_steps": s.pair_steps}
    rounds = PD_N0.bit_length() - 1
    return {
        "teacher": Run("edm", None, {}, 2 * B, (("heun", (18,)), ("euler", FEW), ("ddpm", (18,)))),
        "ddpm-teacher": Run("ddpm", None, SD_BETAS, 2 * B, (("ddim", (18,)),)),
        "cd": Run("cd", "teacher", {"N": 18, **({"distance": "pseudo-huber"} if images else {})}, B, ((None, FEW),)),
        "ct": Run("ct", None, {"s1": 40 if images else 20, "distance": "pseudo-huber", "weighting": "inverse-dsigma"},
                  B, ((None, FEW),)),
        "ict": Run("ict", None, {"s1": 160}, B, ((None, FEW),)),
        "cd-continuous": Run("cd-continuous", "teacher", {}, B, ((None, FEW),)),
        "ct-continuous": Run("ct-continuous", None, {}, B, ((None, FEW),)),
        "ctm": Run("ctm", "teacher", {}, B, ((None, FEW),)),
        "kd": Run("kd", "teacher", pairs, B, ((None, (1,)),)),
        "pd": Run("pd", "teacher", {"N0": PD_N0}, max(B // rounds, 1), ((None, FEW),)),
        "rf": Run("rf", None, {}, B, ((None, FEW),)),
        "reflow": Run("reflow", "teacher", pairs, B, ((None, FEW),)),
        "dmd": Run("dmd", "teacher", pairs, B, ((None, (1,)),)),
        "sds": Run("sds", "teacher", {}, B, ((None, (1,)),)),
        "add": Run("add", "teacher", {"levels": 4}, B, ((None, (1, 2, 4)),)),
        "lcm": Run("lcm", "ddpm-teacher", {"w_max": 0.0}, B, ((None, FEW),)),    # unconditional: no guidance
    }


METHOD_NAMES = [name for name in plan("2d", Settings()) if "teacher" not in name]


def select(runs, methods=None):
    """The names to train, in plan order: the methods asked for (all by default) and the teachers they need.
    'teacher' names the EDM teacher alone."""
    methods = list(methods or METHOD_NAMES)
    unknown = [m for m in methods if m not in METHOD_NAMES and m != "teacher"]
    if unknown:
        raise FewstepError(f"--methods: unknown method(s) {', '.join(unknown)}; choose from teacher, "
                           f"{', '.join(METHOD_NAMES)}")
    wanted = set(methods)
    for name in methods:
        while runs[name].teacher:
            name = runs[name].teacher
            wanted.add(name)
    return [name for name in runs if name in wanted]


def check_data(data):
    """Fashion-MNIST must be installed before anything trains."""
    if "fmnist" in data and not os.path.isdir(FASHION_MNIST_ROOT):
        raise FewstepError(f"--data fmnist needs Fashion-MNIST in {FASHION_MNIST_ROOT}; install it with `make data` "
                           "(apt-get install -y dataset-fashion-mnist), or pass --data 2d")

#----------------------------------------------------------------------------
# What a run costs besides its own steps.


def options_of(cfg):
    """The method options a run trains with: its defaults overridden by the run's own."""
    return {**cfg.method_defaults(), **cfg.method_kwargs}


def teacher_calls(cfg):
    """Teacher network evaluations per training sample and step: CD one ODE step (Heun 2, Euler 1; Algorithm 2,
    seed 000), PD two DDIM steps, continuous CD, DMD, SDS and ADD one denoiser call, LCM one DDIM step (DPM-Solver-2:
    2), CTM two per expected Heun step (ConsistencyTrajectory.teacher_calls); a guided teacher (CFG) costs two. The
    pairs of KD, reflow and DMD are teacher calls made once, counted apart (pair_cost)."""
    o = options_of(cfg)
    if cfg.method == "ctm":
        from .methods.trajectory import ConsistencyTrajectory
        return ConsistencyTrajectory(None, N=o["N"], max_solver_steps=o["max_solver_steps"]).teacher_calls()
    calls = {"cd": 2 if o.get("solver") == "heun" else 1, "pd": 2, "cd-continuous": 1, "dmd": 1, "sds": 1,
             "add": 1, "lcm": 2 if o.get("solver") == "dpm2" else 1}.get(cfg.method, 0)
    guided = cfg.teacher_guidance > 0 or (cfg.method == "lcm" and cfg.cond and o["w_max"] > 0)
    return calls * (2 if guided else 1)


def uses_pairs(cfg):
    """KD and reflow regress teacher pairs; DMD does for its regression loss (reg_weight > 0)."""
    return cfg.method in ("kd", "reflow") or (cfg.method == "dmd" and options_of(cfg)["reg_weight"] > 0)


def pair_key(run, runs):
    """Names a set of pairs: the teacher as trained (name and steps), the pair count, sampler and steps."""
    o = run.options
    return (f"pairs-{run.teacher}{runs[run.teacher].steps}-{o.get('pairs')}x{o.get('pair_sampler') or 'heun'}"
            f"{o.get('pair_steps')}")

#----------------------------------------------------------------------------
# Training, one child process per run.


def config_of(run, base, seed, teacher_path):
    return TrainConfig(method=run.method, teacher=teacher_path, method_kwargs=dict(run.options), steps=run.steps,
                       seed=seed, **base)


def train_runs(folder, base, runs, names, seed, label, log):
    """Train (or reuse) each named run under folder; returns name -> {config, seconds, peak_mb, peak, start_mb,
    path, pair_seconds, pair_peak_mb, reused}. A run resumed after an interruption (at step k0 of its K) is timed
    by the call that finished it, scaled by K / (K - k0) and marked `resumed_at`."""
    done = {}
    for name in names:
        run = runs[name]
        path = os.path.abspath(os.path.join(folder, name))
        cfg = config_of(run, base, seed, done[run.teacher]["path"] if run.teacher else None)
        pairs = {"seconds": 0.0, "peak_mb": 0.0}
        if uses_pairs(cfg):                     # before the run: its own start then finds them made
            pairs = pair_cost(folder, pair_key(run, runs), cfg, log, label)
        record, reused = reusable(path, cfg), True
        if record is None:
            check_not_stale(path, cfg)
            record, reused = {"config": cfg.flat(), **child(folder, name, "train", cfg, path)}, False
            if record["resumed_at"] >= cfg.steps:         # finished before its record was written: the log's clock
                record["seconds"] = logged_seconds(path)
            elif record["resumed_at"]:
                record["seconds"] *= cfg.steps / (cfg.steps - record["resumed_at"])
            write_json(os.path.join(path, RECORD), record)
        done[name] = {**record, "path": path, "pair_seconds": pairs["seconds"], "pair_peak_mb": pairs["peak_mb"],
                      "reused": reused}
        log(f"{label} {name}: {'reused' if reused else 'trained'} ({run.steps} steps"
            f"{' a round' if run.method == 'pd' else ''}, {record['seconds']:.1f} s{resumed(record)}, "
            f"peak {record['peak_mb']:.0f} MB)")
    return done


def resumed(record):
    return f" (resumed at step {record['resumed_at']}: scaled)" if record.get("resumed_at") else ""


def check_not_stale(path, cfg):
    """A run folder left by a compare call with another budget or seed is not continued into this one (steps may
    change on resume, and its teacher was another): one line says so. PD's rounds are checked at round 1."""
    first = os.path.join(path, f"steps-{cfg.method_kwargs['N0'] // 2}") if cfg.method == "pd" else path
    if not os.path.isfile(os.path.join(first, CONFIG)):
        return
    stored = TrainConfig.from_run(read_json(os.path.join(first, CONFIG), "run config", kind=dict))
    changed = [k for k in ("steps", "seed") if getattr(stored, k) != getattr(cfg, k)]
    if not changed and cfg.method != "pd":     # (another steps changes what follows from it: K, lr_decay_steps)
        changed = changed_fields(stored.resolved(), cfg.resolved())
    if changed:
        raise FewstepError(f"{path} holds a run of another compare call ({', '.join(changed)} differ); pass a new "
                           f"--out, or delete that folder to train it again")


def logged_seconds(path):
    """The training seconds metrics.jsonl logged (sec_per_step over each logged stretch of steps)."""
    total, k = 0.0, 0
    for record in read_metrics(path):
        if "sec_per_step" in record:
            total, k = total + record["sec_per_step"] * max(record["k"] - k, 0), record["k"]    # a resume re-logs
    return total


def reusable(path, cfg):
    """The record of a finished run trained with this very config, else None."""
    try:
        record = read_json(os.path.join(path, RECORD), "compare record", kind=dict)
    except FewstepError:
        return None
    return record if record.get("config") == json.loads(json.dumps(cfg.flat())) else None


def pair_cost(folder, key, cfg, log, label):
    """{seconds, peak_mb} of making the teacher pairs, measured once per teacher and pair setting in a child
    process that only makes them, before the first run that needs them: they are cached in TEACHER/pairs/,
    where every such run then finds them. The record is reused while the cache still holds its files (a teacher
    trained again starts an empty cache)."""
    path = os.path.join(folder, "logs", key + ".json")
    if os.path.isfile(path):
        record = read_json(path, "pair record", kind=dict)
        if set(record.get("files", ())) <= pair_files(cfg):     # (a record without its files list: reused)
            return record
    result = child(folder, key, "pairs", cfg, None)
    result["files"] = sorted(pair_files(cfg))
    write_json(path, result)
    what = "made" if result["made"] else "found made before this comparison: loaded"
    log(f"{label} {key}: {what} in {result['seconds']:.1f} s, peak {result['peak_mb']:.0f} MB")
    return result


CHILD = "import sys; from fewstep.compare import child_main; sys.exit(child_main(sys.argv[1]))"


def child(folder, name, job, cfg, path):
    """Run one job ("train" or "pairs") in a fresh Python process; returns {seconds, peak_mb, peak, start_mb}
    (pairs: and whether they were made). Its output goes to folder/logs/NAME.log; a failure is one FewstepError
    line naming the log."""
    logs = make_dir(os.path.join(folder, "logs"), "logs folder")
    spec, result, log_path = (os.path.join(logs, f"{name}.{ext}") for ext in ("spec.json", "result.json", "log"))
    write_json(spec, {"job": job, "config": cfg.flat(), "run": path, "result": result})
    if os.path.exists(result):
        os.remove(result)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "a") as out:            # a resumed run's log keeps the interrupted call's lines
        proc = subprocess.Popen([sys.executable, "-c", CHILD, spec], stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)       # the child's own rusage: its peak RSS, not ours
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not os.path.isfile(result):
        raise FewstepError(f"{name} failed: {last_line(log_path)} (log: {log_path})")
    measured = read_json(result, "child result", kind=dict)
    cuda = measured["cuda_peak_mb"] is not None
    return {"seconds": measured["seconds"], "resumed_at": measured["resumed_at"],
            **({"made": measured["made"]} if job == "pairs" else {}),
            "peak_mb": measured["cuda_peak_mb"] if cuda else usage.ru_maxrss / 1024,    # ru_maxrss is in KiB on Linux
            "peak": "CUDA allocated" if cuda else "process RSS", "start_mb": measured["start_mb"]}


def last_line(path):
    lines = [line.strip() for line in open(path, errors="replace") if line.strip()]
    return lines[-1].removeprefix("fewstep: error: ") if lines else "no output"


def child_main(spec_path):
    """The child process: train one run with resume (PD: every round) or make one run's teacher pairs, and
    write {seconds, cuda_peak_mb, start_mb}. Exit code 2 with one 'fewstep: error:' line on a FewstepError."""
    import resource

    from .rounds import train_progressive
    from .train import build_state, prepare_method, train
    start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # torch and fewstep, imported
    spec = read_json(spec_path, "child spec", kind=dict)
    cfg = TrainConfig.from_dict(spec["config"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    resumed_at = 0                              # PD resumes by rounds: its seconds are the finishing call's
    try:
        checkpoint = os.path.join(spec["run"] or "", CHECKPOINT)
        if spec["job"] == "train" and cfg.method != "pd" and os.path.isfile(checkpoint):
            resumed_at = load_checkpoint(checkpoint)[1]["k"]
        t0 = time.perf_counter()
        if spec["job"] == "pairs":              # the pairs alone: the clock starts once the teacher is loaded
            state, cached = build_state(cfg, prepare=False), pair_files(cfg)
            t0 = time.perf_counter()
            prepare_method(state)
            made = bool(pair_files(cfg) - cached)
        elif cfg.method == "pd":
            train_progressive(cfg, spec["run"], resume=True, progress=False)
        else:
            train(cfg, spec["run"], resume=True, progress=False)
    except FewstepError as e:
        print(f"fewstep: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    cuda_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_initialized() else None
    write_json(spec["result"], {"seconds": seconds, "cuda_peak_mb": cuda_mb, "start_mb": start_mb,
                                "made": made if spec["job"] == "pairs" else None, "resumed_at": resumed_at})
    return 0


def pair_files(cfg):
    """The files in the teacher's pair cache (fewstep.pairs): a new one after prepare() was made by it."""
    folder = os.path.join(cfg.teacher, "pairs")
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()

#----------------------------------------------------------------------------
# Measuring.


def sampled_run(path, method, steps):
    """The run folder a step count samples: a PD lineage's round of that many steps."""
    return os.path.join(path, f"steps-{steps}") if method == "pd" else path


def samplings(runs, names):
    """(name, label, sampler, steps) of every row, in plan order."""
    out = []
    for name in names:
        for sampler, counts in runs[name].sampling:
            label = f"{name} ({runs[name].method})" if name.endswith("teacher") else name
            out += [(name, label, sampler, s) for s in counts]
    return out


def loader():
    """load_model by folder, each run loaded once (on CUDA when the run's device allows)."""
    from .runs import load_model
    cache = {}

    def load(path):
        if path not in cache:
            model, cfg = load_model(path)
            if torch.cuda.is_available() and cfg.device != "cpu":
                model = model.cuda()
            cache[path] = model, cfg
        return cache[path]
    return load


def plural(steps):
    return f"{steps} step{'s' * (steps != 1)}"


def title(sampler, steps, nfe):
    return f"{sampler + ', ' if sampler else ''}{plural(steps)}, {nfe} NFE"


def costs(name, runs, done):
    """Per-row costs of a run: its seconds (pairs included), with its teachers' added, teacher calls and the
    peak memory of its training (or of making its pairs, if larger)."""
    rec, own = done[name], done[name]["seconds"] + done[name]["pair_seconds"]
    total, t = own, runs[name].teacher
    while t:
        total, t = total + done[t]["seconds"], runs[t].teacher
    calls = None if name.endswith("teacher") else teacher_calls(TrainConfig.from_dict(rec["config"]))
    return {"train_s": own, "with_teacher_s": total, "teacher_calls": calls,
            "peak_mb": max(rec["peak_mb"], rec["pair_peak_mb"])}


def measure_2d(out, runs, names, s, log):
    """Every run on every seed; rows hold [mean, sd] over the seeds of sliced W2 to fresh data and the mode
    statistics (metrics.toy.mode_stats), and the mean samples/s, seconds and peak memory."""
    from .data import make_dataset
    from .generate import pick_sampler
    from .metrics.toy import mode_stats, sample_distance
    from .plots import scatter_grid
    data, per_seed, pictures, runs_done, load = make_dataset("gmm", weights=WEIGHTS), {}, {}, {}, loader()
    for seed in s.seeds:
        label = f"[compare] 2d seed {seed}"
        done = train_runs(os.path.join(out, "2d", f"seed{seed}"), base_config("2d", s), runs, names, seed, label, log)
        runs_done[seed] = done
        for name, row_label, sampler, steps in samplings(runs, names):
            model, cfg = load(sampled_run(done[name]["path"], runs[name].method, steps))
            x, nfe, rate = timed_generate(model, cfg, s.n_2d, steps, sampler, 100 + seed)
            row = {"swd": sample_distance(x, data, generator=torch.Generator().manual_seed(7)), **mode_stats(x, data),
                   "samples_per_s": rate, "nfe": nfe, "sampler": pick_sampler(cfg, sampler), **costs(name, runs, done)}
            per_seed.setdefault((row_label, row["sampler"], steps), []).append(row)
            if seed == s.seeds[0]:
                pictures.setdefault(row_label, []).append((title(sampler, steps, nfe), x))
    rows = [summary(label, steps, rs) for (label, _, steps), rs in per_seed.items()]
    for r in rows:
        log(f"[compare] 2d {r['method']}, {r['sampler']}, {plural(r['steps'])}: sliced W2 {r['swd'][0]:.3f}, "
            f"modes hit {r['modes_hit'][0]:.2f}, weight TV {r['weight_tv'][0]:.3f}, off mode {r['off_mode'][0]:.2f}")
    reference = data.sample(s.n_2d, torch.Generator().manual_seed(0))
    fresh = data.sample(s.n_2d, torch.Generator().manual_seed(1))
    floor = sample_distance(fresh, data, generator=torch.Generator().manual_seed(7))        # the metric's floor
    floor_off = mode_stats(fresh, data)["off_mode"]
    scatter_grid([("data", [("data", reference)])] + list(pictures.items()), os.path.join(out, "2d_samples.png"))
    return {"rows": rows, "data_swd": floor, "data_off_mode": floor_off, "runs": {str(k): strip(v) for k, v in runs_done.items()}}


def timed_generate(model, cfg, n, steps, sampler, seed, repeats=3):
    """(samples, NFE, samples/s) of generate: the seeded samples, and the median rate of `repeats` timed calls
    after one untimed warm-up (a single call of a few milliseconds times the allocator and the clock)."""
    from .generate import generate
    rates = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        x, nfe = generate(model, cfg, n, steps, sampler=sampler, generator=torch.Generator().manual_seed(seed))
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        rates.append(n / (time.perf_counter() - t0))
    return x.cpu(), nfe, statistics.median(rates[1:])


MEAN_SD = ("swd", "modes_hit", "weight_tv", "off_mode")


def summary(label, steps, rs):
    """One table row from the seeds' rows: [mean, sd] of the metrics, means of the costs, the largest peak."""
    row = {"method": label, "sampler": rs[0]["sampler"], "steps": steps, "nfe": rs[0]["nfe"]}
    for key in MEAN_SD:
        values = [r[key] for r in rs]
        row[key] = [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]
    for key in ("samples_per_s", "train_s", "with_teacher_s"):
        row[key] = statistics.mean(r[key] for r in rs)
    row.update(teacher_calls=rs[0]["teacher_calls"], peak_mb=max(r["peak_mb"] for r in rs), seeds=len(rs))
    return row


def strip(done):
    return {name: {k: v for k, v in rec.items() if k != "config"} for name, rec in done.items()}


def measure_fmnist(out, runs, names, s, log):
    """One seed: FD and precision/recall (k = 3) in the shipped classifier's features against n_ref test
    images (fewstep.evaluate), at every step count each method samples with, and the FD-vs-NFE plot."""
    from .evaluate import reference_features, sample_images, score
    from .metrics.features import load_feature_net
    from .generate import pick_sampler
    from .plots import image_rows
    seed = s.seeds[0]
    done = train_runs(os.path.join(out, "fmnist"), base_config("fmnist", s), runs, names, seed, "[compare] fmnist", log)
    feature_net = load_feature_net()
    ref = reference_features(feature_net, n=s.n_ref)
    rows, pictures, load = [], {}, loader()
    for name, label, sampler, steps in samplings(runs, names):
        model, cfg = load(sampled_run(done[name]["path"], runs[name].method, steps))
        x, nfe, rate = sample_images(model, cfg, s.n_images, steps, sampler=sampler, seed=seed)
        rows.append({"method": label, "sampler": pick_sampler(cfg, sampler), "steps": steps, "nfe": nfe,
                     **score(feature_net, x, ref)[1], "samples_per_s": rate,
                     **costs(name, runs, done)})
        pictures.setdefault(label, []).append((title(sampler, steps, nfe), x[:16].cpu()))
        log(f"[compare] fmnist {label}, {rows[-1]['sampler']}, {plural(steps)}: FD {rows[-1]['fd']:.2f}, precision "
            f"{rows[-1]['precision']:.3f}, recall {rows[-1]['recall']:.3f}")
    image_rows(list(pictures.items()), os.path.join(out, "fmnist_samples.png"))
    fd_plot(rows, os.path.join(out, "fmnist_fd_vs_nfe.png"))
    return {"rows": rows, "runs": {str(seed): strip(done)}}


def fd_plot(rows, path):
    """FD against NFE, one line per method and sampler."""
    from .plots import fd_vs_nfe_plot
    fd_vs_nfe_plot([{**r, "model": f"{r['method']}, {r['sampler']}"} for r in rows], path)

#----------------------------------------------------------------------------
# Tables.


def budget_rule(s, runs, names):
    rounds = PD_N0.bit_length() - 1
    pd = (f" PD spends B over its {rounds} rounds ({PD_N0} -> 1 steps, {runs['pd'].steps} steps each)."
          if "pd" in names else "")
    lcm = " LCM distils its own DDPM (VP) teacher, also trained 2B steps." if "lcm" in names else ""
    users = [n for n in ("kd", "reflow", "dmd") if n in names]
    pairs = (f" {', '.join(users)} regress {s.pairs} teacher pairs ({s.pair_steps} Heun steps each), made once per "
             "teacher: their seconds are added to each of them." if users else "")
    teacher = (f"one EDM teacher trained 2B = {2 * s.budget} steps; every few-step method trains B = {s.budget} "
               "steps from it (or from data)" if "teacher" in names else
               f"every few-step method trains B = {s.budget} steps")
    return f"Budget rule: {teacher}, with the same batch, learning rate and network.{pd}{lcm}{pairs}"


def notes(measure):
    return ["`train s`: the seconds of the run's training process (PD: all rounds; pairs added); `with teacher s` "
            "adds the teachers' seconds. `teacher calls`: teacher network evaluations per training sample and "
            "step (CD Heun 2, Euler 1; CT, iCT, rf 0; PD 2; DMD, SDS, ADD, continuous CD, LCM 1; CTM its expected "
            "Heun steps x 2; doubled for a guided teacher; pairs not included). `samples/s`: sampling speed of "
            "the row.",
            f"`peak MB`: {measure}."]


def peak_measure(datasets):
    recs = [rec for d in datasets.values() for done in d["runs"].values() for rec in done.values()]
    if recs and recs[0]["peak"] == "CUDA allocated":
        return "torch.cuda.max_memory_allocated of the run's training process"
    start = statistics.median(rec["start_mb"] for rec in recs) if recs else 0
    return (f"peak resident set of the run's training process (os.wait4's ru_maxrss; kd, reflow, dmd: or of the "
            f"process that made their pairs, if larger), of which about {start:.0f} MB is the process with torch and "
            "fewstep imported, before training")


def fmt(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


def mean_sd(v, digits, seeds):
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}" if seeds > 1 else f"{v[0]:.{digits}f}"


def cost_cells(r):
    return (f"{r['samples_per_s']:.0f} | {r['train_s']:.1f} | {r['with_teacher_s']:.1f} | "
            f"{fmt(r['teacher_calls'], 1)} | {r['peak_mb']:.0f} |")


COST_HEAD = "samples/s | train s | with teacher s | teacher calls | peak MB |"


def table_2d(rows):
    lines = ["| method | sampler | steps | NFE | sliced W2 | modes hit | mode-weight TV | off mode | " + COST_HEAD,
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        metrics = " | ".join(mean_sd(r[k], digits, r["seeds"]) for k, digits in (("swd", 3), ("modes_hit", 2),
                                                                                 ("weight_tv", 3), ("off_mode", 2)))
        lines.append(f"| {r['method']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {metrics} | " + cost_cells(r))
    return "\n".join(lines)


def table_fmnist(rows):
    lines = ["| method | sampler | steps | NFE | FD | precision | recall | " + COST_HEAD,
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['fd']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | " + cost_cells(r))
    return "\n".join(lines)


def machine():
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}){gpu}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def network(data, s):
    b = base_config(data, s)
    return f"Every run: {b['net']} {json.dumps(b['net_kwargs'])}, batch {b['batch']}, learning rate {b['lr']:g}."


def markdown(command, s, rule, datasets, seconds):
    parts = ["# fewstep compare", "",
             f"Command: `{command}`; {time.strftime('%Y-%m-%d %H:%M')}; {machine()}; {seconds / 60:.1f} min.", "",
             rule, ""]
    if "2d" in datasets:
        d, seeds = datasets["2d"], ", ".join(map(str, s.seeds))
        parts += ["## 2-D mixture (8 modes, weights 1..8)", "",
                  f"{'Mean ± sd over seeds' if len(s.seeds) > 1 else 'Seed'} {seeds}; {s.n_2d} samples per row and "
                  f"seed. A fresh draw of the data scores sliced W2 {d['data_swd']:.3f} with {d['data_off_mode']:.3f} of "
                  f"its samples off mode (farther than 3 sd from every mean: a blur or a ring between the modes "
                  f"raises it where modes hit stays at 1). {network('2d', s)}", "",
                  table_2d(d["rows"]), ""]
    if "fmnist" in datasets:
        parts += ["## Fashion-MNIST", "",
                  f"Seed {s.seeds[0]}; {s.n_images} samples per row against {s.n_ref} test images, in the shipped "
                  f"classifier's features. {network('fmnist', s)}", "", table_fmnist(datasets["fmnist"]["rows"]), ""]
    parts += notes(peak_measure(datasets))
    scaled = sorted({name for d in datasets.values() for done in d["runs"].values() for name, rec in done.items()
                     if rec.get("resumed_at")})
    if scaled:
        parts += ["", "Resumed after an interruption, so timed by the call that finished them and scaled by K / (K - k0): "
                  + ", ".join(scaled) + "."]
    parts += ["", "Not compared: " + "; ".join(f"{m} ({why})" for m, why in NOT_COMPARED.items()) + "."]
    return "\n".join(parts) + "\n"

#----------------------------------------------------------------------------
# The command.


def run_compare(out="compare_out", data=DATASETS, methods=None, settings=None, command="fewstep compare", log=None):
    """Train (or reuse) and measure every selected method on each dataset; writes OUT/compare.md, compare.json
    and the pictures; returns {dataset: {"rows": [...], "runs": {...}}}."""
    s, log = settings or Settings(), log or (lambda line: print(line, file=sys.stderr, flush=True))
    check_data(data)
    make_dir(out)
    t0, datasets, rule = time.perf_counter(), {}, None
    for d in data:
        runs = plan(d, s)
        names = select(runs, methods)
        rule = budget_rule(s, runs, names)
        datasets[d] = (measure_2d if d == "2d" else measure_fmnist)(out, runs, names, s, log)
        # written after each dataset, so that a failure in the next one keeps this one's table
        write_text(os.path.join(out, "compare.md"), markdown(command, s, rule, datasets, time.perf_counter() - t0))
        write_json(os.path.join(out, "compare.json"), {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
                   "machine": machine(), "budget_rule": rule, "settings": dataclasses.asdict(s), "datasets": datasets,
                   "not_compared": NOT_COMPARED})
    trained = sum(not rec["reused"] for d in datasets.values() for done in d["runs"].values() for rec in done.values())
    total = sum(len(done) for d in datasets.values() for done in d["runs"].values())
    log(f"[compare] {trained} run(s) trained, {total - trained} reused; wrote {out}/compare.md, compare.json and "
        "the pictures")
    return datasets
