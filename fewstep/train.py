"""The one training loop, split into named steps: build the state, take a step, log, save, resume.

Every method runs through it on the protocol of methods/base.py: the loop builds the modules the method
trains, one optimizer per group and the EMA copies it declares (plus "ema", the sampling copy), then
each step updates every group in order, as often as the group asks, each update on a fresh batch. A
resumed run equals an uninterrupted one bit for bit: the checkpoint holds every module, EMA copy,
optimizer state and stream generator (its data, noise and dropout) by name.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
import types

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import distributed, optim
from .checkpoint import (TMP_PREFIX, flatten, load_checkpoint, load_state, make_dir, optimizer_from_tensors,
                         optimizer_to_tensors, save_checkpoint, unflatten, write_json, write_text)
from .config import TrainConfig
from .ema import EMA, ema_warmup
from .errors import FewstepError, Interrupted
from .generate import generate, run_process
from .guidance import ClassifierFreeGuidance, drop_labels, guide
from .methods import DISTILLATION, METHODS
from .nets import sample_shape
from .nets.diffusers import is_diffusers_folder
from .processes import VE
from .runs import (CHECKPOINT, CONFIG, METRICS, build_dataset, build_model, changed_fields, check_checkpoint_config,
                   load_config, load_teacher, read_metrics)


SAMPLING_EMA = "ema"            # the EMA copy of the method's sample_module: the run's model


@dataclasses.dataclass
class TrainState:
    cfg: TrainConfig
    method: object
    modules: dict                   # name -> trained module (theta inside its wrapper for one-network methods)
    emas: dict                      # name -> (EMA, name of the module it follows); SAMPLING_EMA among them
    optimizers: dict                # group name -> optimizer over the group's parameters
    params: dict                    # group name -> the parameters it trains
    data: object
    generators: dict                # stream -> generator of its data, noise and dropout (the global RNG: init only)
    dist: distributed.Dist          # this process's rank, world size and device
    k: int = 0                      # training steps taken
    saved_k: int = None             # step of the last checkpoint written or restored (None: none yet)
    start_k: int = 0                # the step this call started from (> 0 when resumed)
    context: object = None          # what Method.prepare sees: cfg, sample shape, classes, device, pair folder

    @property
    def my_streams(self):
        return range(self.dist.rank, self.cfg.streams, self.dist.world)

    @property
    def net(self):
        """The module the run samples (its trained weights)."""
        return self.modules[self.method.sample_module]

    @property
    def ema(self):
        return self.emas[SAMPLING_EMA][0]

    @property
    def target(self):
        """CD/CT's theta^- (None for methods without it)."""
        return self.emas["target"][0] if "target" in self.emas else None

    def nets(self):
        """Every trained module and EMA copy by name, as a method's loss sees them."""
        return {**self.modules, **{name: ema.module for name, (ema, _) in self.emas.items()}}

    def trained_parameters(self):
        return [p for m in self.modules.values() for p in m.parameters()]


def build_state(cfg, teacher=None, dist_info=None, prepare=True):
    """Everything a run needs, freshly initialised from cfg. Distillation loads the teacher run
    cfg.teacher, unless `teacher` passes a denoiser D(x, sigma, **cond) directly (then cfg.teacher is
    only its label in config.json). prepare=False leaves the method's prepare() (teacher pairs) to
    prepare_method(state), so a finished run that is only reopened makes nothing."""
    cfg = cfg.resolved().validate()
    dist_info = dist_info or distributed.Dist()
    torch.manual_seed(cfg.seed)     # the global RNG drives network init; dropout runs on the streams' generators
    data = build_dataset(cfg)
    net = _placed(build_model(cfg, data), data, dist_info)
    kwargs = cfg.method_arguments()
    if cfg.method in DISTILLATION:
        kwargs["teacher"] = guided_teacher(cfg, teacher if teacher is not None else _load_teacher(cfg, net, dist_info), data)
    try:
        method = METHODS[cfg.method](**kwargs)
    except (TypeError, ValueError) as e:
        raise FewstepError(f"bad options for method {cfg.method!r}: {e}") from None
    run = types.SimpleNamespace(cfg=cfg, shape=sample_shape(net.net) if hasattr(net, "net") else None,
                                device=dist_info.device, dist=dist_info, pair_folder=_pair_folder(cfg, teacher),
                                num_classes=getattr(data, "num_classes", 0) if cfg.cond else 0)
    modules = method.build(net, lambda: _placed(build_model(cfg, data), data, dist_info))
    emas = {name: (EMA(modules[src], rate), src) for name, (src, rate) in method.emas().items()}
    emas[SAMPLING_EMA] = (EMA(modules[method.sample_module], functools.partial(ema_warmup, cfg.ema)), method.sample_module)
    clash = sorted((set(modules) & set(emas)) | ((set(modules) | set(emas)) & RESERVED))
    if clash:
        raise ValueError(f"method {cfg.method!r} names modules or EMA copies {clash}: those names are taken")
    params = {name: optim.group_parameters(modules, group) for name, group in method.groups.items()}
    optimizers = {name: optim.make_optimizer(params[name], cfg, group) for name, group in method.groups.items()}
    generators = {r: torch.Generator().manual_seed(cfg.seed + 1 + r) for r in range(cfg.streams)}
    state = TrainState(cfg=cfg, method=method, modules=modules, emas=emas, optimizers=optimizers, params=params,
                       data=data, generators=generators, dist=dist_info, context=run)
    if prepare:
        prepare_method(state)
    return state


def prepare_method(state):
    """The method's prepare() (a distillation's teacher pairs), with one line for what makes it fail."""
    try:
        state.method.prepare(state.context)
    except (TypeError, ValueError) as e:
        raise FewstepError(f"method {state.cfg.method!r} cannot start: {e}") from None


def _pair_folder(cfg, teacher):
    """Teacher pairs live beside the teacher run (TEACHER/pairs), so every student of it reuses them."""
    return os.path.join(cfg.teacher, "pairs") if cfg.teacher and teacher is None else None


def _placed(model, data, dist_info):
    """A model in train mode on the run's device (channels-last for images on a GPU: faster convolutions)."""
    model = model.train().to(dist_info.device)
    if dist_info.device.type == "cuda" and len(getattr(data, "shape", ())) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


def _load_teacher(cfg, net, dist_info):
    """The teacher run cfg.teacher on the device; the student starts from its weights when asked."""
    teacher, teacher_cfg = load_teacher(cfg.teacher)
    teacher = teacher.to(dist_info.device)
    check_teacher_shape(cfg, teacher, net)
    ours = getattr(net, "process", VE())
    same_inputs = isinstance(teacher.process, VE) == isinstance(ours, VE)      # EDM's inputs, or an eps-net's
    if cfg.init_from_teacher and METHODS[cfg.method].starts_from_teacher and not same_inputs:
        raise FewstepError(f"method {cfg.method!r} starts from its teacher's weights, which a {teacher_cfg.method!r} "
                           f"({teacher.process.name}) network cannot give a {ours.name} student; distill a "
                           f"teacher trained with {'edm' if isinstance(ours, VE) else 'ddpm'} (or a run made from one)")
    if cfg.init_from_teacher and same_inputs:                          # same network inputs as the student
        state = teacher.net.state_dict()
        theirs = sorted({k.split(".")[1] for k in state if k.split(".")[0] in ("scalar_emb", "map_scalar")}
                        - set(METHODS[cfg.method].net_scalars))
        if theirs:
            raise FewstepError(f"the teacher {cfg.teacher} is a {teacher_cfg.method!r} run whose network embeds {theirs}, "
                               f"which a {cfg.method!r} student's does not; start the student fresh with --set "
                               "init_from_teacher=false")
        try:
            load_state(net.net, {**_adapted(net.net, state), **_own_scalar_embeddings(net.net, state)}, cfg.teacher)
        except FewstepError:
            raise FewstepError(f"the teacher {cfg.teacher} is a {teacher_cfg.net} {json.dumps(teacher_cfg.net_kwargs)} "
                               f"and the student a {cfg.net} {json.dumps(cfg.net_kwargs)}: a student that starts from "
                               "its teacher needs the same network; leave out the student's --set net.* options (it "
                               "then takes the teacher's) or pass --set init_from_teacher=false") from None
    if cfg.teacher_guidance and not teacher_cfg.cond:
        raise FewstepError(f"teacher_guidance needs a class-conditional teacher; {cfg.teacher} was trained without cond=true")
    if cfg.teacher_guidance and not teacher_cfg.label_dropout:
        raise FewstepError(f"teacher_guidance needs a teacher that learned the null label; {cfg.teacher} was trained "
                           "with label_dropout=0: retrain it with --set label_dropout=0.1")
    try:
        METHODS[cfg.method].check_teacher({**cfg.method_defaults(), **cfg.method_kwargs}, teacher_cfg)
    except ValueError as e:
        raise FewstepError(f"the teacher {cfg.teacher} cannot teach {cfg.method!r}: {e}") from None
    return teacher


def _adapted(net, teacher_state):
    """The teacher's weights under the student's names when the student carries LoRA adapters (fewstep.lora: a
    wrapped layer's weights become <layer>.base_layer.*), with the adapters' own initial weights (B = 0, so the
    student starts as its teacher)."""
    own = net.state_dict()
    if not any(".lora_" in key for key in own):
        return teacher_state
    renamed = {}
    for key, value in teacher_state.items():
        layer, leaf = key.rsplit(".", 1)
        renamed[key if key in own else f"{layer}.base_layer.{leaf}"] = value
    return {**renamed, **{key: value for key, value in own.items() if ".lora_" in key}}


def _own_scalar_embeddings(net, teacher_state):
    """The student's embeddings of scalar conditions its teacher lacks (CTM's s), with their output layer at
    zero: the student starts as its teacher whatever the condition's value."""
    own = {}
    for key, value in net.state_dict().items():
        if key not in teacher_state and key.split(".")[0] in ("scalar_emb", "map_scalar"):
            own[key] = torch.zeros_like(value) if ".linear." in key else value
    return own


def check_teacher_shape(cfg, teacher, net):
    theirs, ours = sample_shape(teacher.net), sample_shape(net.net)
    if theirs != ours:
        raise FewstepError(f"teacher run {cfg.teacher} makes samples of shape {theirs} but this run's data "
                           f"({cfg.data}) has shape {ours}; distill a teacher trained on the same data")


def guided_teacher(cfg, teacher, data):
    """The teacher with classifier-free guidance at scale cfg.teacher_guidance (seed 002), whether it was
    loaded from cfg.teacher or passed in; the null label is the teacher network's class count (a plain
    function's: the dataset's), as drop_labels uses in training."""
    if not cfg.teacher_guidance:
        return teacher
    null_label = getattr(getattr(teacher, "net", None), "num_classes", None) or data.num_classes
    return ClassifierFreeGuidance(teacher, cfg.teacher_guidance, null_label=null_label)


def prepare_batch(state, batch, generator):
    """Move the batch to the device; keep the labels of a class-conditional run (dropping some to the
    null label for classifier-free guidance) and strip them from an unconditional one."""
    if not isinstance(batch, dict):
        if state.cfg.cond:
            raise FewstepError(f"dataset {state.cfg.data!r} has no class labels; drop --set cond=true")
        return batch.to(state.dist.device)
    if not state.cfg.cond:
        batch = {k: v for k, v in batch.items() if k != "class_labels"}
        if set(batch) == {"x"}:
            return batch["x"].to(state.dist.device)
    else:
        labels = drop_labels(batch["class_labels"], state.cfg.label_dropout, state.data.num_classes, generator)
        batch = {**batch, "class_labels": labels}
    return _to_device(batch, state.dist.device)


def _to_device(value, device):
    """A batch's tensors on the device, extras (a nested dict) included."""
    return {k: _to_device(v, device) for k, v in value.items()} if isinstance(value, dict) else value.to(device)


@contextlib.contextmanager
def stream_rng(generator, device):
    """The global RNG (dropout) seeded from the stream's generator, and restored after: stream r draws
    the same masks whichever process runs it, so W processes with S/W streams each compute what one
    process with S streams does."""
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _kept_checkpoint(state):
    return ("no checkpoint was written yet" if state.saved_k is None
            else f"the last good checkpoint (step {state.saved_k}) is kept")


def bad_loss_message(state, loss, group=None):
    """One line for a NaN/inf loss: what, at which step, the fix, and what is kept."""
    what = "NaN" if math.isnan(loss) else "infinite"
    whose = f" of group {group!r}" if group is not None and len(state.method.groups) > 1 else ""
    return (f"the loss{whose} is {what} at step {state.k + 1}; lower the learning rate (--lr, now {state.cfg.lr:g}) "
            f"or check the data for NaN/inf values; {_kept_checkpoint(state)}")


def train_step(state):
    """One training step: every optimizer group updated in the method's order, as often as it asks, then
    the EMA copies (theta^- of CD/CT with mu(k), the sampling EMA). Returns {group: mean loss}."""
    losses = {}
    for name, group in state.method.groups.items():
        losses[name] = sum(update_group(state, name) for _ in range(group.updates)) / group.updates
    for ema, src in state.emas.values():
        ema.update(state.modules[src], state.k)
    state.k += 1
    return losses


def update_group(state, name):
    """One update of one group over this process's streams (Algorithms 2/3, or a teacher's loss): a fresh
    batch per stream, gradients summed over all streams and processes, only into this group's
    parameters, a NaN guard, then the optimizer step."""
    cfg, params, optimizer = state.cfg, state.params[name], state.optimizers[name]
    optim.set_lr(optimizer, optim.lr_at(cfg, state.method.groups[name], state.k))
    trained = set(map(id, params))
    for p in state.trained_parameters():        # the other groups' parameters get no gradient from this loss
        p.requires_grad_(id(p) in trained)
        p.grad = None
    nets, total = state.nets(), 0.0
    for r in state.my_streams:
        g = state.generators[r]
        batch = prepare_batch(state, state.data.sample(cfg.batch // cfg.streams, g), g)
        autocast = torch.autocast(state.dist.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        with stream_rng(g, state.dist.device), autocast:
            loss = state.method.loss(name, nets, batch, k=state.k, generator=g) / cfg.streams
        loss.backward()
        total += loss.item()
    total = distributed.all_reduce_sum(total, state.dist.world, state.dist.device)
    if not math.isfinite(total):
        raise FewstepError(bad_loss_message(state, total, name))
    distributed.all_reduce_grads(params, state.dist.world)
    optimizer.step()
    return total


def save(state, path):
    """Write the full training state: every rank gathers the streams' generators, rank 0 writes and its
    errors reach every rank. Refuses non-finite weights so a bad run never replaces a good checkpoint;
    the ranks decide that together, before the sync check (where NaN checksums would never match). A
    write that fails (a full or read-only disk) leaves the previous checkpoint as it was."""
    finite = all(torch.isfinite(p).all() for p in state.trained_parameters())
    if distributed.any_rank(not finite, state.dist.world, state.dist.device):
        raise FewstepError(f"the weights became NaN/inf by step {state.k}; lower the learning rate "
                           f"(--lr, now {state.cfg.lr:g}) or check the data; {_kept_checkpoint(state)}")
    distributed.check_in_sync(state.trained_parameters(), state.dist.world)
    gens = {}
    for part in distributed.gather_objects({r: state.generators[r].get_state() for r in state.my_streams}, state.dist.world):
        gens.update(part)
    def write():
        try:
            _write_checkpoint(state, path, gens)
        except OSError as e:
            raise FewstepError(f"cannot write the checkpoint {path} ({e.strerror or e}); free space or fix the "
                               f"folder, then continue with: fewstep resume {os.path.dirname(path)}; "
                               f"{_kept_checkpoint(state)}") from None
    distributed.on_main(write, state.dist)
    state.saved_k = state.k


RESERVED = {"optim", "rng", "state"}          # checkpoint prefixes that are not module or EMA names


def _write_checkpoint(state, path, gens):
    """Every module, EMA copy and optimizer by name, the method's own state, the RNGs, and the config."""
    tensors, optimizers = {}, {}
    for name, module in state.modules.items():
        tensors.update(flatten(name, module.state_dict()))
    for name, (ema, _) in state.emas.items():
        tensors.update(flatten(name, ema.state_dict()))
    for name, optimizer in state.optimizers.items():
        optim_tensors, optimizers[name] = optimizer_to_tensors(optimizer, f"optim.{name}")
        tensors.update(optim_tensors)
    tensors.update(flatten("state", state.method.state_dict()))
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({f"rng.stream.{r}": s for r, s in gens.items()})
    save_checkpoint(path, tensors, {"k": state.k, "optimizers": optimizers, "config": state.cfg.to_dict(),
                                    "world": state.dist.world})


def restore(state, path):
    tensors, meta = load_checkpoint(path)
    check_checkpoint_config(meta, state.cfg, path)
    for name, module in state.modules.items():
        load_state(module, unflatten(name, tensors), path)
    for name, (ema, _) in state.emas.items():
        load_state(ema.module, unflatten(name, tensors), path, f"EMA copy {name!r}")
    for name, optimizer in state.optimizers.items():
        optimizer.load_state_dict(optimizer_from_tensors(tensors, meta["optimizers"][name], f"optim.{name}"))
    state.method.load_state_dict(unflatten("state", tensors))
    torch.set_rng_state(tensors["rng.torch"])
    for r, g in state.generators.items():
        g.set_state(tensors[f"rng.stream.{r}"])
    state.k = state.saved_k = state.start_k = meta["k"]


def prepare_run_dir(cfg, run_dir, resume):
    """(resolved cfg, checkpoint to resume or None), after checking that run_dir can hold the run: a new or
    empty folder, or a run to resume. A resumed run keeps its config (K of the CT/iCT curricula included)
    except for the fields in RESUMABLE. Writes nothing but the folder itself and removes the temporary
    files of a checkpoint write that was killed."""
    check_out_dir(run_dir)
    ckpt = os.path.join(run_dir, CHECKPOINT)
    if os.path.exists(ckpt) and not resume:
        raise FewstepError(f"{run_dir} already holds a trained run; continue it with: fewstep resume {run_dir} "
                           "(or choose another --out)")
    resuming = resume and os.path.exists(ckpt)
    if resuming:
        old = load_config(run_dir).resolved()
        if "K" in old.method_kwargs and "K" not in cfg.method_kwargs:
            cfg = dataclasses.replace(cfg, method_kwargs={**cfg.method_kwargs, "K": old.method_kwargs["K"]})
        cfg = dataclasses.replace(cfg, lr_decay_steps=cfg.lr_decay_steps or old.lr_decay_steps)
    else:
        cfg = _student_network(cfg)
    cfg = cfg.resolved().validate()
    if resuming:
        changed = changed_fields(old, cfg)
        if changed:
            raise FewstepError(f"--resume with a different config ({', '.join(changed)} changed); "
                               f"resume with the settings in {os.path.join(run_dir, CONFIG)} or use another --out")
        read_metrics(run_dir)               # a damaged log stops here, before anything is written
    make_dir(run_dir, "run folder")
    for name in os.listdir(run_dir):        # what a kill during a checkpoint write left behind
        if name.startswith(TMP_PREFIX) and os.path.isfile(os.path.join(run_dir, name)):
            os.remove(os.path.join(run_dir, name))
    return cfg, ckpt if resuming else None


def _student_network(cfg):
    """A student that starts from its teacher takes the teacher's network options unless it names its own
    (so a teacher of any size, or of an earlier release, distills without repeating them)."""
    path = os.path.join(cfg.teacher or "", CONFIG)
    if cfg.teacher and is_diffusers_folder(cfg.teacher):     # a diffusers teacher: its U-Net's architecture, fresh
        from .export import student_network
        same = cfg.net == "diffusers" and not cfg.net_kwargs
        return dataclasses.replace(cfg, net_kwargs=student_network(cfg.teacher)) if same else cfg
    if not (cfg.teacher and cfg.init_from_teacher and not cfg.net_kwargs and os.path.isfile(path)):
        return cfg
    teacher = load_config(cfg.teacher)
    if teacher.net != cfg.net:
        return cfg
    kwargs = dict(teacher.net_kwargs)
    kwargs.pop("scalars", None)         # the teacher's own conditions (CTM's s); the student's come from its method
    return dataclasses.replace(cfg, net_kwargs=kwargs)


def check_out_dir(run_dir):
    """One line for an --out that cannot be a run folder: empty, a file, or a folder of other things."""
    if not run_dir or not str(run_dir).strip():
        raise FewstepError("--out is empty; pass the run folder to write, e.g. --out runs/teacher")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise FewstepError(f"--out {run_dir} is a file, not a folder; pass a new folder for the run")
    if os.path.isdir(run_dir) and not os.path.exists(os.path.join(run_dir, CONFIG)):
        others = [n for n in os.listdir(run_dir) if not n.startswith(TMP_PREFIX)]
        if others:
            raise FewstepError(f"--out {run_dir} is a folder of other files ({others[0]}, ...), not a fewstep run; "
                               "pass a new or empty folder")


def _drop_metrics_after(run_dir, k):
    """A resumed run re-logs the steps after its checkpoint: drop the interrupted run's lines for them."""
    path = os.path.join(run_dir, METRICS)
    if os.path.exists(path):
        keep = [r for r in read_metrics(run_dir) if r["k"] <= k]
        write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def log_metrics(run_dir, record):
    """Append one record to metrics.jsonl (an append is all or nothing for a line this short)."""
    with open(os.path.join(run_dir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg, run_dir, resume=False, progress=True, teacher=None):
    """Train cfg into run_dir; returns the final TrainState. Under torchrun every rank calls this and
    rank 0 writes. Checkpoints every cfg.ckpt_every steps and at the end; a failure (bad loss, a full
    disk, Ctrl-C) leaves the last checkpoint as it was, and a new run that fails before its first
    checkpoint leaves no folder behind. progress: a bar on a terminal, one line per log interval
    otherwise (a log file, CI). `teacher`: see build_state."""
    dist_info = distributed.init(cfg.device)
    if cfg.streams % dist_info.world:
        raise FewstepError(f"{dist_info.world} processes cannot share {cfg.streams} streams; launch a number "
                           f"of processes that divides --set streams (or set streams to a multiple of {dist_info.world})")
    existed = distributed.on_main(lambda: _listing(run_dir), dist_info)
    state = None
    try:
        cfg, ckpt_to_resume = distributed.on_main(lambda: prepare_run_dir(cfg.validate(), run_dir, resume), dist_info)
        state = build_state(cfg, teacher, dist_info, prepare=False)
        if ckpt_to_resume:
            restore(state, ckpt_to_resume)
            if state.k > cfg.steps:
                raise FewstepError(f"{run_dir} is already at step {state.k}, past --steps {cfg.steps}; pass --steps "
                                   f"{state.k} or more (nothing was changed)")
            if state.k == cfg.steps:
                return state            # nothing to train: every file stays as it is
        prepare_method(state)
        distributed.on_main(lambda: _start_files(state, run_dir, ckpt_to_resume), dist_info)
        _run(state, run_dir, progress)
    except BaseException as e:
        if dist_info.main and not _saved(state):
            _remove_new_files(run_dir, existed)
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(_interrupted_message(state, run_dir)) from None
        if isinstance(e, OSError):    # a full or read-only disk while logging: the checkpoint is intact
            raise FewstepError(f"cannot write to {run_dir} ({e.strerror or e}); free space or fix the folder; "
                               f"{_kept_checkpoint(state) if state else 'nothing was trained'}") from None
        raise
    return state


def _saved(state):
    return state is not None and state.saved_k is not None


def _listing(run_dir):
    """(names in run_dir before this call or None when it did not exist, the highest folder of run_dir's path
    that did not exist), so a failed new run removes only what it made."""
    if not run_dir or os.path.isdir(run_dir):
        return (set(os.listdir(run_dir)) if run_dir else None), None
    top = os.path.abspath(run_dir)
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    return None, top


def _remove_new_files(run_dir, existed):
    """Best effort: the error being reported matters more than a file that cannot be removed."""
    existed, top = existed
    try:
        for name in set(os.listdir(run_dir)) - (existed or set()):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        folder = os.path.abspath(run_dir)
        while top is not None and not os.listdir(folder):       # the folders this run created, innermost first
            os.rmdir(folder)
            if folder == top:
                break
            folder = os.path.dirname(folder)
    except (OSError, TypeError):
        pass


def _interrupted_message(state, run_dir):
    if not _saved(state):
        return f"interrupted{f' at step {state.k}' if state else ''} before the first checkpoint; nothing was saved"
    return (f"interrupted at step {state.k}; the checkpoint of step {state.saved_k} is intact: continue with "
            f"fewstep resume {run_dir}")


def _start_files(state, run_dir, resumed):
    """config.json (written once the state is built, so a run that cannot start leaves nothing), and the
    metrics of a resumed run cut back to its checkpoint."""
    write_json(os.path.join(run_dir, CONFIG), state.cfg.to_dict())
    if resumed:
        _drop_metrics_after(run_dir, state.k)


def _run(state, run_dir, progress):
    cfg, main = state.cfg, state.dist.main
    interactive = progress and main and sys.stderr.isatty()
    writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=state.k + 1) if main else None
    bar = tqdm(total=cfg.steps, initial=state.k, disable=not interactive, dynamic_ncols=True,
               desc=f"{cfg.method} {os.path.basename(os.path.normpath(run_dir))}", leave=False, mininterval=1.0)
    try:
        _loop(state, run_dir, bar, writer, lines=progress and main and not interactive)
    finally:
        bar.close()
        if writer is not None:
            writer.close()


def _loop(state, run_dir, bar, writer, lines=False):
    cfg, losses, t0 = state.cfg, [], time.perf_counter()
    while state.k < cfg.steps:
        losses.append(train_step(state))
        bar.update(1)
        if (state.k % cfg.log_every == 0 or state.k == cfg.steps) and not state.dist.main:
            losses, t0 = [], time.perf_counter()            # only rank 0 logs; the others keep nothing
        elif state.k % cfg.log_every == 0 or state.k == cfg.steps:
            record = _log(state, run_dir, losses, time.perf_counter() - t0, bar, writer)
            tenth = lambda k: 10 * k // cfg.steps                                   # noqa: E731
            if lines and tenth(state.k) != tenth(state.k - len(losses)):           # about ten lines a run
                loss = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith("loss"))
                print(f"{cfg.method} {run_dir}: step {state.k}/{cfg.steps}  {loss}  "
                      f"{record['sec_per_step']:.3f} s/step", file=sys.stderr, flush=True)
            losses, t0 = [], time.perf_counter()
        if state.k % cfg.ckpt_every == 0 or state.k == cfg.steps:
            save(state, os.path.join(run_dir, CHECKPOINT))
            if state.dist.main:
                _log_samples(state, writer)


@torch.no_grad()
def _log_samples(state, writer, n=16):
    """A grid of EMA samples in TensorBoard for image runs: 1 step for consistency models, 9 Heun steps
    (17 NFE) for teachers; fixed noise, so grids are comparable across steps."""
    net = getattr(state.ema.module, "net", None)
    if not hasattr(net, "img_shape"):
        return
    steps = getattr(run_process(state.ema.module, state.cfg), "N", None) or state.method.produces.preview_steps   # PD: its grid
    cond = {"class_labels": torch.arange(n, device=state.dist.device) % net.num_classes} if state.cfg.cond else None
    model = guide(state.ema.module, state.cfg)                                # LCM: its w input, at w = 0
    x, _ = generate(model, state.cfg, n, steps, generator=torch.Generator().manual_seed(0), cond=cond)
    x = state.data.decode(x) if hasattr(state.data, "decode") else x         # a latent run shows its images
    writer.add_images("samples", (x.float().clamp(-1, 1) + 1) / 2, state.k)


def _log(state, run_dir, losses, seconds, bar, writer):
    """One metrics.jsonl record per interval: the mean loss ("loss", or "loss.GROUP" for several groups)."""
    names = list(losses[0])
    means = {name: sum(step[name] for step in losses) / len(losses) for name in names}
    record = {"k": state.k, **({"loss": means[names[0]]} if len(names) == 1 else
                               {f"loss.{name}": v for name, v in means.items()}),
              "sec_per_step": seconds / len(losses), "samples_per_sec": state.cfg.batch * len(losses) / max(seconds, 1e-9)}
    if state.target is not None:
        record["mu"] = state.target.mu(state.k)
    if hasattr(state.method, "calls_per_sample"):          # CTM: teacher evaluations per training sample
        record["teacher_calls"] = state.method.calls_per_sample
    if hasattr(state.method, "N"):
        record["N"] = state.method.N(state.k) if callable(state.method.N) else state.method.N
    log_metrics(run_dir, record)
    for key, value in record.items():
        if key != "k":
            writer.add_scalar(f"train/{key}", value, state.k)
    bar.set_postfix(**{k: f"{v:.4g}" for k, v in record.items() if k.startswith("loss")},
                    img_s=f"{record['samples_per_sec']:.0f}")
    return record
