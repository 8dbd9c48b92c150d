"""The training configuration: every argument that defines a run, written as config.json into the run
folder (EDM's training_options.json idea) and read back to rebuild the models for sampling."""

import dataclasses
import inspect
import json
import math
import os
import textwrap
from dataclasses import dataclass, field

from .data import DATASETS, IMAGE_DATASETS
from .errors import FewstepError
from .methods import DISTILLATION, METHODS
from .nets import NETS
from .nets.diffusers import is_diffusers_folder
from .optim import LR_DECAYS, OPTIMIZERS

DEFAULT_BATCH = {"flat": 512, "images": 64}   # 64 images of 28 px fit a CPU step in well under a second
DEFAULT_UNET = "cpu-tiny"                       # the U-Net size when --net unet names none (fewstep.nets.unet)
SHARED = ("sigma_min", "sigma_max", "rho", "sigma_data")   # run fields that methods also take
NOT_OPTIONS = ("teacher", "feature_net")                    # method arguments that are objects, not options
MAX_SEED = 2 ** 62                                          # torch generators take 64-bit seeds; streams add r + 1


TYPE_NAMES = {str: "a string", dict: "a JSON object", list: "a JSON list", bool: "true or false", int: "an integer",
              float: "a number"}


def _is_a(value, kind):
    """isinstance for config values: JSON has no int/float split, and True is not the number 1 here."""
    if isinstance(value, bool) or kind is bool:
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


@dataclass
class TrainConfig:
    method:            str   = "edm"        # Training method, a key of fewstep.methods.METHODS.
    method_kwargs:     dict  = field(default_factory=dict)   # Its hyperparameters (K defaults to steps).
    teacher:           str   = None         # Run folder of a diffusion teacher, for cd / cd-continuous.
    init_from_teacher: bool  = True         # Distillation: start the student from the teacher's weights.
    data:              str   = "gmm"        # Dataset, a key of fewstep.data.DATASETS.
    data_kwargs:       dict  = field(default_factory=dict)
    cond:              bool  = False        # Class-conditional: feed the dataset's labels to the network.
    label_dropout:     float = 0.0          # Classifier-free guidance: probability of the null label in training.
    teacher_guidance:  float = 0.0          # Distillation: CFG scale w of the teacher, (w+1) D_c - w D_u (seed 002).
    net:               str   = "mlp"        # Raw network, a key of fewstep.nets.NETS.
    net_kwargs:        dict  = field(default_factory=dict)
    sigma_data:        float = 0.5          # Data standard deviation used by the preconditioning.
    sigma_min:         float = 0.002        # epsilon: the consistency boundary and the grid's lower end.
    sigma_max:         float = 80.0         # T: the largest noise level.
    rho:               float = 7.0          # Karras grid exponent.
    boundary:          str   = "scalings"   # Consistency parameterization: "scalings" (option 2) or "switch" (option 1).
    steps:             int   = 4000         # Training steps (the K of the CT/iCT curricula unless given).
    batch:             int   = None         # Batch size (None: 512 for 2-D data, 64 for images).
    lr:                float = 1e-3         # Learning rate (a method's optimizer group may set its own).
    optimizer:         str   = "adam"       # "adam", "adamw" or "radam" (fewstep.optim.OPTIMIZERS).
    betas:             list  = field(default_factory=lambda: [0.9, 0.999])   # The optimizer's betas.
    weight_decay:      float = 0.0          # Weight decay (decoupled for adamw).
    lr_warmup:         int   = 0            # Steps of linear learning-rate warm-up from lr / lr_warmup.
    lr_decay:          str   = "none"       # "none" or "cosine" (to 0 at lr_decay_steps).
    lr_decay_steps:    int   = None         # The cosine's length (None: --steps, fixed when the run starts).
    ema:               float = 0.999        # Rate of the EMA used for sampling (with a warm-up).
    seed:              int   = 0            # Seeds the network initialisation, the data and the noise.
    streams:           int   = 1            # Data/noise streams of the global batch; torchrun's world size must divide it.
    device:            str   = "auto"       # "auto" (CUDA when available), "cuda" or "cpu".
    bf16:              bool  = False        # bfloat16 autocast for the network (samplers stay in float32/64).
    log_every:         int   = 100          # Steps between progress-bar updates, metrics.jsonl and TensorBoard.
    ckpt_every:        int   = 1000         # Steps between checkpoints (the last step always saves).

    def __post_init__(self):
        if isinstance(self.betas, tuple):               # JSON has lists only; keep one spelling for comparisons
            self.betas = list(self.betas)

    def flat(self):
        """{field: value}: the Python view (and the layout of config.json before sections)."""
        return dataclasses.asdict(self)

    def to_dict(self):
        """The sections of config.json: run, data, network, method, optimizer, process (see PLACES)."""
        sections = {name: {} for name in SECTIONS}
        for field_name, value in self.flat().items():
            section, key = PLACES[field_name]
            sections[section][key] = value
        return sections

    @classmethod
    def from_run(cls, d):
        """The config of a run folder or checkpoint: from_dict, plus the reading of files that fewstep 0.1
        wrote (flat, with every field of that release and none of the optimizer's)."""
        if not is_sectioned(d) and RELEASE_1_FIELDS <= set(d) and "optimizer" not in d:
            d = _from_release_1(d)
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d):
        """A config from its sections (config.json) or from flat fields (Python, and runs written before
        sections: they load unchanged)."""
        if is_sectioned(d):
            d = unsection(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise FewstepError(f"unknown config field(s) {unknown}; valid fields are {sorted(names)} "
                               f"(or the sections {', '.join(SECTIONS)})")
        return cls(**d)

    def method_arguments(self):
        """The method's constructor arguments: method_kwargs plus the run's defaults it accepts."""
        params = inspect.signature(METHODS[self.method]).parameters
        shared = {"K": self.steps, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                  "rho": self.rho, "sigma_data": self.sigma_data}
        kwargs = {k: v for k, v in shared.items() if k in params}
        kwargs.update(self.method_kwargs)
        return kwargs

    def method_defaults(self):
        """The method's own options with their defaults (K = steps for the CT/iCT curricula); the
        SHARED ones come from the run's fields and the object arguments are not options."""
        params = inspect.signature(METHODS[self.method]).parameters
        return {name: (self.steps if name == "K" else p.default) for name, p in params.items()
                if name not in SHARED + NOT_OPTIONS and (name == "K" or p.default is not inspect.Parameter.empty)}

    def resolved(self):
        """A copy with every default written out, so that config.json says what the run used: the batch
        (DEFAULT_BATCH by kind of data), the U-Net size, and every method option (the curriculum length K
        included, so that extending --steps on resume keeps the schedule the run started with)."""
        batch = self.batch or DEFAULT_BATCH["images" if self.data in IMAGE_DATASETS else "flat"]
        net_kwargs = {"config": DEFAULT_UNET, **self.net_kwargs} if self.net == "unet" else dict(self.net_kwargs)
        needs = list(getattr(METHODS.get(self.method), "net_scalars", ()))     # CTM's network embeds s
        if needs and "scalars" not in net_kwargs:
            net_kwargs["scalars"] = needs
        for key in ("path", "config") if self.net == "diffusers" else ():     # its U-Net folder, from any directory
            if isinstance(net_kwargs.get(key), str):
                net_kwargs[key] = os.path.abspath(os.path.expanduser(net_kwargs[key]))
        data_kwargs = dict(self.data_kwargs)
        for key in ("root", "autoencoder"):                 # a run must load from any working directory
            if isinstance(data_kwargs.get(key), str):
                data_kwargs[key] = os.path.abspath(os.path.expanduser(data_kwargs[key]))
        method_kwargs = {**self.method_defaults(), **self.method_kwargs} if self.method in METHODS else self.method_kwargs
        if getattr(METHODS.get(self.method), "process_from_teacher", False):     # LCM: the teacher's T and betas
            method_kwargs = {**method_kwargs, **teacher_process(self.teacher), **self.method_kwargs}
        return dataclasses.replace(self, batch=batch, net_kwargs=net_kwargs, data_kwargs=data_kwargs,
                                   method_kwargs=method_kwargs, lr_decay_steps=self.lr_decay_steps or self.steps)

    def check_types(self):
        """Each field holds its declared type (an int counts as a float, a bool as neither), so a bad
        --set value stops here in one line rather than as a TypeError deep in training."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if (value is None and f.default is None) or _is_a(value, f.type):
                continue
            example = f"; e.g. --set {f.name}={json.dumps(f.default)}" if f.type in (bool, int, float) else ""
            raise FewstepError(f"{f.name} must be {TYPE_NAMES[f.type]}, got {value!r}{example}")
        return self

    def validate(self):
        """Raise FewstepError (one line: problem and fix) for a config that cannot train."""
        self.check_types()
        if self.method not in METHODS:
            raise FewstepError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.method in DISTILLATION and not self.teacher:
            raise FewstepError(f"method {self.method!r} distills a teacher; pass --teacher RUN "
                               "(a run trained with: fewstep train edm --out RUN)")
        if self.data not in DATASETS:
            raise FewstepError(f"unknown dataset {self.data!r}; choose one of: {', '.join(sorted(DATASETS))}")
        if self.net not in NETS:
            raise FewstepError(f"unknown network {self.net!r}; choose one of: {', '.join(sorted(NETS))}")
        for name in ("steps", "batch", "log_every", "ckpt_every", "streams"):
            v = getattr(self, name)
            if (v is not None or name != "batch") and (not isinstance(v, int) or v < 1):
                raise FewstepError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "sigma_data", "sigma_min", "sigma_max", "rho"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise FewstepError(f"{name} must be a positive number, got {v!r}")
        if self.lr > 1:         # Adam's step is about lr per weight: beyond 1 it overflows before any loss is seen
            raise FewstepError(f"lr must be at most 1 (Adam moves each weight by about lr per step), got {self.lr:g}; "
                               "try --lr 1e-3")
        if not 0 <= self.seed < MAX_SEED:
            raise FewstepError(f"seed must be an integer in [0, 2**62), got {self.seed}")
        if self.batch and self.batch % self.streams:
            raise FewstepError(f"batch ({self.batch}) must be a multiple of streams ({self.streams})")
        if self.device not in ("auto", "cuda", "cpu"):
            raise FewstepError(f"device must be auto, cuda or cpu, got {self.device!r}")
        if not self.sigma_min < self.sigma_max:
            raise FewstepError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        if self.boundary not in ("scalings", "switch"):
            raise FewstepError(f"boundary must be 'scalings' (option 2) or 'switch' (option 1), got {self.boundary!r}")
        if not 0 <= self.label_dropout < 1:
            raise FewstepError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.label_dropout > 0 and not self.cond:
            raise FewstepError("label_dropout needs a class-conditional run; add --set cond=true")
        if (self.method == "classifier") != (self.net == "classifier") or (self.method == "classifier" and not self.cond):
            raise FewstepError("a guidance classifier trains with: fewstep train classifier --net classifier --set cond=true")
        if (self.method == "vae") != (self.net == "autoencoder") or (self.method == "vae" and self.cond):
            raise FewstepError("a latent autoencoder trains unconditionally with: fewstep train vae --net autoencoder "
                               "--data fashion-mnist --set data.pad_to=32")
        if self.teacher_guidance and self.method in ("lcm", "lcm-lora", "lora"):
            raise FewstepError(f"{self.method} guides its teacher itself (lcm: w ~ U[w_min, w_max]; lcm-lora: --set w=...)"
                               if self.method != "lora" else "a style lora fine-tunes its teacher's weights and never "
                               "samples it: leave out teacher_guidance")
        if self.teacher_guidance and not (self.cond and self.method in DISTILLATION):
            raise FewstepError(f"teacher_guidance needs a class-conditional distillation run ({', '.join(sorted(DISTILLATION))}) "
                               "with --set cond=true")
        if self.optimizer not in OPTIMIZERS:
            raise FewstepError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if (len(self.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                            for b in self.betas)):
            raise FewstepError(f"betas must be two numbers in [0, 1), got {self.betas!r}; e.g. --set betas=[0.9,0.999]")
        if self.lr_decay not in LR_DECAYS:
            raise FewstepError(f"unknown lr_decay {self.lr_decay!r}; choose one of: {', '.join(LR_DECAYS)}")
        if self.lr_decay_steps is not None and (not isinstance(self.lr_decay_steps, int) or self.lr_decay_steps < 1):
            raise FewstepError(f"lr_decay_steps must be a positive integer, got {self.lr_decay_steps!r}")
        if not isinstance(self.lr_warmup, int) or self.lr_warmup < 0:
            raise FewstepError(f"lr_warmup must be a number of steps >= 0, got {self.lr_warmup!r}")
        if not 0 <= self.weight_decay < 1:
            raise FewstepError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")
        if not 0 <= self.ema < 1:
            raise FewstepError(f"ema must be in [0, 1), got {self.ema}")
        params = inspect.signature(METHODS[self.method]).parameters
        shared = sorted(set(self.method_kwargs) & set(SHARED))
        if shared:
            raise FewstepError(f"{shared[0]} is a run field shared by the loss and the preconditioning, not a method "
                               f"option; set it with --set process.{shared[0]}=VALUE")
        if "K" in self.method_kwargs and (not isinstance(self.method_kwargs["K"], int)
                                          or isinstance(self.method_kwargs["K"], bool) or self.method_kwargs["K"] < 1):
            raise FewstepError(f"method option K (the curriculum's length in steps) must be a positive integer, "
                               f"got {self.method_kwargs['K']!r}")
        scalars = self.net_kwargs.get("scalars") or []
        needed = sorted(set(METHODS[self.method].net_scalars) - set(scalars))
        if needed and "scalars" in self.net_kwargs:
            raise FewstepError(f"method {self.method!r} needs its network to embed {needed}; leave net.scalars out "
                               "(the method adds it)")
        missing = sorted(set(scalars) - set(METHODS[self.method].conditions))
        if missing:
            raise FewstepError(f"net.scalars {missing}: method {self.method!r} supplies no such condition (it supplies "
                               f"{list(METHODS[self.method].conditions) or 'none'}); leave net.scalars out")
        bad = sorted(k for k in self.method_kwargs if k not in params or k == "teacher")
        if bad:
            valid = [p for p in params if p not in ("teacher", "feature_net")]
            raise FewstepError(f"method {self.method!r} has no option(s) {bad}; its options are {valid}")
        for name, value in self.method_kwargs.items():       # typed like the option's default, when it has one
            kind = type(params[name].default)
            if kind in TYPE_NAMES and not _is_a(value, kind):
                raise FewstepError(f"method option {name} must be {TYPE_NAMES[kind]}, got {value!r}; "
                                   f"e.g. --set {name}={json.dumps(params[name].default)}")
        return self


def teacher_process(teacher):
    """The process options (T, betas, schedule) of a teacher run's config.json, {} when there is none to read
    (a missing teacher is reported where it is loaded)."""
    if teacher and is_diffusers_folder(teacher):    # a diffusers folder: its scheduler's betas (fewstep.export)
        from .export import diffusers_process_options
        try:
            return diffusers_process_options(teacher)
        except (OSError, ValueError, FewstepError):
            return {}
    try:
        with open(os.path.join(teacher, "config.json")) as f:
            theirs = TrainConfig.from_run(json.load(f))
    except (OSError, TypeError, ValueError, FewstepError):
        return {}
    return {k: v for k, v in theirs.method_kwargs.items() if k in ("T", "beta_start", "beta_end", "schedule")}


# config.json's sections: field -> (section, key). Each section is checked by its own component: the run's
# fields here, data options by the dataset, network options by the network (runs.check_options), method
# options by the method's signature, optimizer fields by fewstep.optim's lists.
SECTIONS = ("run", "data", "network", "method", "optimizer", "process")
PLACES = {
    "method": ("method", "name"), "method_kwargs": ("method", "options"), "teacher": ("method", "teacher"),
    "init_from_teacher": ("method", "init_from_teacher"), "teacher_guidance": ("method", "teacher_guidance"),
    "data": ("data", "name"), "data_kwargs": ("data", "options"), "cond": ("data", "cond"),
    "label_dropout": ("data", "label_dropout"),
    "net": ("network", "name"), "net_kwargs": ("network", "options"),
    "optimizer": ("optimizer", "name"), **{f: ("optimizer", f) for f in ("lr", "betas", "weight_decay", "lr_warmup",
                                                                         "lr_decay", "lr_decay_steps")},
    **{f: ("process", f) for f in ("sigma_data", "sigma_min", "sigma_max", "rho", "boundary")},
    **{f: ("run", f) for f in ("steps", "batch", "ema", "seed", "streams", "device", "bf16", "log_every", "ckpt_every")},
}
FIELD_OF = {place: name for name, place in PLACES.items()}


RELEASE_1_FIELDS = {"method", "method_kwargs", "teacher", "init_from_teacher", "data", "data_kwargs", "cond",
                    "label_dropout", "teacher_guidance", "net", "net_kwargs", "sigma_data", "sigma_min", "sigma_max",
                    "rho", "boundary", "steps", "batch", "lr", "ema", "seed", "streams", "device", "bf16",
                    "log_every", "ckpt_every"}


def _from_release_1(d):
    """A config.json written by fewstep 0.1 (flat, every field but the optimizer ones): its `--net unet`
    without a size meant UNet's own defaults, which are named "base" now that cpu-tiny is the default."""
    if d.get("net") == "unet" and "config" not in (d.get("net_kwargs") or {}):
        d = {**d, "net_kwargs": {**d["net_kwargs"], "config": "base"}}
    return d


def is_sectioned(d):
    """Whether a config dict is in sections (a flat one's "method", "data", "optimizer" are strings)."""
    return bool(d) and all(k in SECTIONS and isinstance(v, dict) for k, v in d.items())


def unsection(sections):
    """Flat fields from config.json's sections, with one line for a key that belongs nowhere."""
    flat = {}
    for section, values in sections.items():
        if not isinstance(values, dict):
            raise FewstepError(f"config section {section!r} must be a JSON object, got {values!r}")
        for key, value in values.items():
            if (section, key) not in FIELD_OF:
                valid = sorted(k for s, k in FIELD_OF if s == section)
                raise FewstepError(f"unknown key {key!r} in config section {section!r}; its keys are {valid}")
            flat[FIELD_OF[section, key]] = value
    return flat


def method_options(name=None):
    """`fewstep methods`: each method (or one), the seed line of its docstring, and its options with defaults."""
    if name is not None and name not in METHODS:
        raise FewstepError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    lines = []
    for method, cls in METHODS.items():
        if name not in (None, method):
            continue
        doc = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
        doc += " Needs --teacher RUN." if method in DISTILLATION else ""
        options = TrainConfig(method=method, steps=4000).method_defaults()
        lines.append(textwrap.fill(doc, 110, initial_indent=f"{method:14s} ", subsequent_indent=" " * 15))
        lines += [f"    {k} = {json.dumps(v)}" + ("   (default: --steps)" if k == "K" else "") for k, v in options.items()]
        lines.append("")
    lines.append("Set an option with --set NAME=VALUE; sigma_min, sigma_max, rho and sigma_data are run fields "
                 "(--set sigma_max=40), shared by every method.")
    return "\n".join(lines)
