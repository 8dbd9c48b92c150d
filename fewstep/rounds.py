"""Progressive distillation's rounds (seeds 002 and 003; Salimans & Ho 2022): one command that halves the
steps from N0 down to 1, each round a plain run whose teacher is the round before.

    OUT/lineage.json     the rounds in order: steps, run folder, teacher
    OUT/steps-32/        round 1: 64 -> 32 steps, taught by the teacher run
    OUT/steps-16/        round 2: 32 -> 16, taught by OUT/steps-32
    ...
    OUT/steps-1/         the last round: a one-step model (fewstep sample OUT/steps-1 --steps 1)

Each round's config.json records its teacher (the lineage) and N, N0 (its own grid, which `sample` uses).
Run again with --resume: finished rounds are kept, an interrupted round continues from its checkpoint.
"""

import dataclasses
import os
import sys

from .checkpoint import make_dir, write_json
from .errors import FewstepError, Interrupted
from .train import train

LINEAGE = "lineage.json"


def round_steps(N0):
    """N0/2, N0/4, ..., 1."""
    if not isinstance(N0, int) or N0 < 2 or N0 & (N0 - 1):
        raise FewstepError(f"progressive distillation halves the steps down to 1: N0 must be a power of two >= 2, "
                           f"got {N0!r}; e.g. --set N0=64")
    return [N0 >> r for r in range(1, N0.bit_length())]


def train_progressive(cfg, out, resume=False, progress=True):
    """Every round of progressive distillation from cfg.teacher into OUT/steps-N; returns the last round's
    TrainState. cfg holds one round's settings (--steps per round); its method options may not name N."""
    if "N" in cfg.method_kwargs:
        raise FewstepError("train_progressive runs every round itself; drop the method option N (or train one "
                           "round alone with --set N=...)")
    N0 = cfg.method_kwargs.get("N0", 64)
    steps = round_steps(N0)
    if not cfg.teacher:
        raise FewstepError("method 'pd' distills a teacher; pass --teacher RUN (a run trained with: fewstep train edm --out RUN)")
    if os.path.isfile(os.path.join(out, "config.json")):
        raise FewstepError(f"{out} is a single run, not a folder of rounds; pass a new --out for all rounds")
    make_dir(out, "rounds folder")
    teacher, lineage, state = cfg.teacher, [], None
    for r, N in enumerate(steps, 1):
        run = os.path.join(out, f"steps-{N}")
        lineage.append({"round": r, "steps": N, "run": os.path.abspath(run), "teacher": teacher})
        write_json(os.path.join(out, LINEAGE), {"N0": N0, "rounds": lineage})
        if progress:
            print(f"pd round {r}/{len(steps)}: {2 * N} -> {N} steps -> {run}", file=sys.stderr, flush=True)
        round_cfg = dataclasses.replace(cfg, teacher=teacher, method_kwargs={**cfg.method_kwargs, "N": N, "N0": N0})
        try:
            state = train(round_cfg, run, resume=resume, progress=progress)
        except (FewstepError, Interrupted) as e:         # the way back is every round, not this one alone
            raise type(e)(f"{e} [round {r}/{len(steps)}; to continue every round: fewstep resume {out}]") from None
        teacher = os.path.abspath(run)
    return state
