"""Seconds per training step of CD and iCT on the cpu-tiny U-Net (Fashion-MNIST, batch 64) for the fewstep on
PYTHONPATH; one JSON line per method (docs/BENCHMARKS.md, "Training step cost"). Not a test: a benchmark."""

import json
import os
import tempfile
import time

import torch

from fewstep.config import TrainConfig
from fewstep.train import build_state, train, train_step

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
base = dict(data="fashion-mnist", net="unet", net_kwargs={"config": "cpu-tiny"}, batch=64, lr=5e-4, seed=0)
tmp = tempfile.mkdtemp()
teacher = os.path.join(tmp, "teacher")
train(TrainConfig(method="edm", steps=1, **base), teacher, progress=False)
for name, extra in (("cd", dict(teacher=teacher, method_kwargs={"N": 18, "solver": "heun", "distance": "pseudo-huber"})),
                    ("ict", dict(method_kwargs={"s1": 160, "K": 1000}))):
    state = build_state(TrainConfig(method=name, steps=1000, **base, **extra))
    for _ in range(3):
        train_step(state)
    n, t0 = int(os.environ.get("STEPS", "20")), time.perf_counter()
    for _ in range(n):
        train_step(state)
    print(json.dumps({"method": name, "sec_per_step": (time.perf_counter() - t0) / n}), flush=True)
