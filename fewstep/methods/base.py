"""The method protocol: what a training method declares and the one training loop (train.py) runs.

A method is a small class. It declares
  produces    the kind of model the run makes (fewstep.kinds: DENOISER, CONSISTENCY, GENERATOR, ...);
  groups      name -> Group: the modules one optimizer updates, its learning rate and betas, how many
              updates it gets per training step and which of their parameters it trains;
  emas()      name -> (module, rate): the EMA copies the loop keeps (rate a float or a schedule mu(k));
and computes
  loss(group, nets, batch, *, k, generator)   the loss of one group, with nets holding every trainable
              module and EMA copy by name. The loop draws a fresh batch for each update, so a group
              updated several times per step (DMD2's fake score) sees new samples each time.
Frozen networks (a teacher) are plain attributes; what must exist before the first step (teacher pairs)
is made in prepare(run); non-trainable state that must survive a resume goes
through state_dict() / load_state_dict().

A single-network method needs none of this: it writes `__call__(net, batch, *, target, k, generator)`
as in EDM's training/loss.py, and the defaults below train its one network "net" with one optimizer.
"""

import dataclasses
import inspect

from ..processes import VE


@dataclasses.dataclass(frozen=True)
class Group:
    """One optimizer and what it updates."""
    modules:    tuple = ("net",)    # Names of the trainable modules it updates (keys of Method.build's dict).
    lr:         float = None        # Learning rate; None: the run's --lr.
    betas:      tuple = None        # Adam betas; None: the run's betas.
    updates:    int   = 1           # Updates of this group per training step (each on a fresh batch).
    params:     str   = "*"         # Glob over parameter names: the subset trained (adapters: "*lora_*").


class Method:
    """Defaults for a method with one trained network `net`, one optimizer and no EMA copy of its own."""
    produces = None                 # a fewstep.kinds kind
    process = VE                    # the noise process class; built from the method options it takes
    groups = {"net": Group()}
    sample_module = "net"           # the module whose sampling EMA ("ema") is the run's model
    conditions = ()                 # names of the scalar conditions its batches supply (LCM: "w"; net.scalars)
    net_scalars = ()                # scalar conditions its network must embed (CTM: "s"), added to net.scalars
    starts_from_teacher = False     # distillation that only works from the teacher's weights (PD, DMD, SDS, ADD, CTM)

    def emas(self):
        return {}

    @classmethod
    def adapt_net(cls, net, options):
        """The raw network as the method trains and samples it, before any weights are loaded (LoRA methods
        add their adapters here); runs.build_model calls it, so a reloaded run has the same layers."""
        return net

    @classmethod
    def make_process(cls, options):
        """The run's noise process, built from the method options its constructor takes (DDPM: T, betas)."""
        params = inspect.signature(cls.process).parameters
        return cls.process(**{k: v for k, v in options.items() if k in params})

    def build(self, net, make_model):
        """The trainable modules by name. `net` is the run's freshly built model (the teacher's weights
        already in it when the student starts from the teacher); make_model() builds another one."""
        return {"net": net}

    def loss(self, group, nets, batch, *, k, generator):
        return self(nets["net"], batch, target=nets.get("target"), k=k, generator=generator)

    @classmethod
    def check_teacher(cls, options, teacher_cfg):
        """Raise ValueError for a teacher run (its TrainConfig) that this method, with these options, cannot
        distill; the weights are checked when they load."""

    def prepare(self, run):
        """Make what training needs before its first step (a distillation's teacher pairs). `run` holds the
        run's cfg, one sample's shape, num_classes (0: unconditional), device, dist and pair_folder (where
        teacher pairs are cached; None when the teacher was passed in Python)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")
