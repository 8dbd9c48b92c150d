"""Multi-process training with torch.distributed (launched by `torchrun`): gloo on CPU, nccl on GPU.

The global batch is split into `cfg.streams` streams, each with its own data/noise generator; rank w of
W processes streams w, w + W, ... and the gradients are summed over all streams. A run is therefore the
same computation on any world size that divides `streams` (one process runs all streams in turn), and
it resumes on any such world size. Gradients are all-reduced explicitly after backward rather than by
DistributedDataParallel hooks, because several methods differentiate through torch.func.jvp and
evaluate the raw module for their targets, which DDP's forward hooks do not follow.
"""

import dataclasses
import os

import torch
import torch.distributed as dist

from .errors import FewstepError


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0


def init(device="auto"):
    """The process's rank, world size and device; starts the process group when torchrun launched us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FewstepError("--set device=cuda but no CUDA device is visible; use device=cpu or auto")
    dev = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank=dist.get_rank() if world > 1 else 0, world=world, device=dev)


def all_reduce_grads(params, world):
    """Sum the gradients over processes in one flat buffer."""
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for g, v in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(v.view_as(g))


def all_reduce_sum(value, world, device):
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def gather_objects(obj, world):
    """A list of every rank's obj (on every rank)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier(world):
    if world > 1:
        dist.barrier()


def broadcast_object(obj, world):
    """Rank 0's obj, on every rank."""
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn, info):
    """fn() run on rank 0 alone (a step that writes the run folder), its result given to every rank. A
    FewstepError on rank 0 is raised on every rank with the same line, so no rank is left waiting in a
    collective for a rank that has quit."""
    result, error = None, None
    if info.main:
        try:
            result = fn()
        except FewstepError as e:
            error = str(e)
    result, error = broadcast_object((result, error), info.world)
    if error is not None:
        raise FewstepError(error)
    return result


def any_rank(flag, world, device):
    """True on every rank when `flag` is true on any rank: a decision all ranks take together."""
    return all_reduce_sum(float(bool(flag)), world, device) > 0


def check_in_sync(params, world):
    """Raise if the processes' weights have drifted apart (they must stay identical after every step)."""
    if world == 1:
        return
    checksum = float(sum(p.detach().double().sum() for p in params))
    sums = gather_objects(checksum, world)
    if len(set(sums)) != 1:
        raise FewstepError(f"the processes' weights diverged (checksums {sums}); this is a bug, please report it")
