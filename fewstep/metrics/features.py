"""The feature network for image metrics: a Fashion-MNIST classifier that fewstep trains itself
(`fewstep train-classifier`) and ships as a small safetensors file, so FD and precision/recall run
offline with no downloaded weights. FD in its 128-d feature space plays the role Inception's 2048-d
pool features play for FID; numbers are comparable only with other numbers from the same file."""

import json
import os
import time

import torch
from safetensors.torch import load_file, save_file

from ..errors import FewstepError
from ..nets.classifier import Classifier

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
FMNIST_CLASSIFIER = os.path.join(ASSETS, "fmnist_classifier.safetensors")


def load_feature_net(path=FMNIST_CLASSIFIER):
    """The shipped classifier (eval mode, frozen); its constructor arguments ride in the file's metadata."""
    if not os.path.isfile(path):
        raise FewstepError(f"feature network {path} not found; train it with: fewstep train-classifier --out {path}")
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("config", "{}"))
    net = Classifier(**config)
    net.load_state_dict(load_file(path))
    return net.eval().requires_grad_(False)


def train_feature_classifier(out=FMNIST_CLASSIFIER, epochs=2, batch=256, lr=2e-3, seed=0, progress=True):
    """Train the Fashion-MNIST classifier on the train split and save it; returns its test accuracy."""
    from tqdm import tqdm

    from ..data.images import FashionMNIST
    torch.manual_seed(seed)
    train, test = FashionMNIST("train"), FashionMNIST("test")
    config = {"in_channels": 1, "num_classes": 10, "channels": [32, 64, 128], "feature_dim": 128}
    net = Classifier(**config)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * len(train) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), disable=None if progress else True, desc="classifier", mininterval=1.0):
        b = train.sample(batch, g)
        loss = torch.nn.functional.cross_entropy(net(b["x"]), b["class_labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    acc = accuracy(net.eval(), test)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out,
              metadata={"config": json.dumps(config), "test_accuracy": f"{acc:.4f}",
                        "train_seconds": f"{time.perf_counter() - t0:.0f}"})
    return acc


@torch.no_grad()
def accuracy(net, data, batch=1000):
    x = data.images.float() / 127.5 - 1
    correct = sum((net(x[i:i + batch]).argmax(1) == data.labels[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)
