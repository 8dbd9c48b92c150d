"""`fewstep eval`: sample quality against NFE for an image run, measured offline.

For each step count: n samples, their features in the shipped Fashion-MNIST classifier, the Frechet
distance (FD) and improved precision/recall (k = 3) against the test split's features, sampling speed,
and a PNG grid. Writes RUN/eval/{metrics.json, metrics.md, fd_vs_nfe.png, samples_<steps>.png}.
"""

import json
import os
import time

import torch

from .data.images import FashionMNIST
from .errors import FewstepError
from .generate import generate
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .metrics.fd import extract_features, fd_from_features
from .metrics.features import load_feature_net
from .metrics.precision_recall import precision_recall
from .plots import image_grid, line_plot
from .runs import build_dataset, load_model


def reference_features(feature_net, n=10000):
    """Features of the first n Fashion-MNIST test images (the reference set of every table)."""
    test = FashionMNIST("test")
    return extract_features(feature_net, test.images[:n].float() / 127.5 - 1)


def crop_to(x, size):
    """Centre-crop images padded for the U-Net (32 px) back to the classifier's 28 px."""
    off = (x.shape[-1] - size) // 2
    return x[..., off:off + size, off:off + size] if off > 0 else x


@torch.no_grad()
def sample_images(model, cfg, n, steps, *, sampler=None, guidance=0.0, classifier=None, batch=500, seed=0):
    """(images in [-1, 1], NFE, images/s): n samples in batches, class labels balanced when conditional.
    guidance w: classifier-free for a conditional run, or classifier guidance with `classifier`."""
    g = torch.Generator().manual_seed(seed)
    shape = model.net.img_shape
    num_classes = classifier.num_classes if classifier is not None else model.net.num_classes
    if classifier is not None:
        model = ClassifierGuidance(model, classifier, guidance)
    elif cfg.cond and guidance:
        model = ClassifierFreeGuidance(model, guidance, null_label=num_classes)
    out, t0, nfe = [], time.perf_counter(), 0
    for i in range(0, n, batch):
        m = min(batch, n - i)
        cond = {"class_labels": torch.arange(i, i + m) % num_classes} if cfg.cond or classifier is not None else None
        x, nfe = generate(model, cfg, m, steps, sampler=sampler, generator=g, cond=cond, shape=shape)
        out.append(x.clamp(-1, 1))
    return torch.cat(out), nfe, n / (time.perf_counter() - t0)


def evaluate(run, steps, n=10000, sampler=None, guidance=0.0, classifier_run=None, seed=0, out=None, progress=True):
    """Rows {steps, nfe, fd, precision, recall, images_per_sec} for each step count; writes the outputs."""
    model, cfg = load_model(run)
    classifier = load_model(classifier_run)[0] if classifier_run else None
    if cfg.method == "classifier":
        raise FewstepError(f"run {run} is a guidance classifier, not a generator; evaluate a teacher with "
                           f"--classifier {run} --guidance W")
    if not cfg.cond and classifier is None and guidance:
        raise FewstepError("--guidance needs a class-conditional run (cond=true, label_dropout > 0) or --classifier RUN")
    if not hasattr(getattr(model, "net", None), "img_shape"):
        raise FewstepError(f"run {run} is not an image model; fewstep eval measures image runs "
                           "(use fewstep sample for 2-D runs)")
    data = build_dataset(cfg)
    feature_net = load_feature_net()
    ref = reference_features(feature_net)
    out = out or os.path.join(run, "eval")
    os.makedirs(out, exist_ok=True)
    rows = []
    for s in steps:
        x, nfe, rate = sample_images(model, cfg, n, s, sampler=sampler, guidance=guidance, classifier=classifier, seed=seed)
        feats = extract_features(feature_net, crop_to(x, 28), progress=progress)
        pr = precision_recall(ref, feats, k=3)
        rows.append({"steps": s, "nfe": nfe, "fd": fd_from_features(feats, ref), **pr, "images_per_sec": rate})
        image_grid(x[:100], os.path.join(out, f"samples_{s}steps.png"), nrow=10)
        print(format_row(rows[-1]), flush=True)
    _write(out, rows, run, data)
    return rows


def format_row(r):
    return (f"steps {r['steps']:>4}  NFE {r['nfe']:>4}  FD {r['fd']:8.3f}  precision {r['precision']:.3f}  "
            f"recall {r['recall']:.3f}  {r['images_per_sec']:8.1f} images/s")


def _write(out, rows, run, data):
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=2)
    lines = ["| steps | NFE | FD | precision | recall | images/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['nfe']} | {r['fd']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['images_per_sec']:.1f} |" for r in rows]
    with open(os.path.join(out, "metrics.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    line_plot([r["nfe"] for r in rows], [r["fd"] for r in rows], os.path.join(out, "fd_vs_nfe.png"),
              xlabel="NFE", ylabel="FD (Fashion-MNIST classifier features)", title=os.path.basename(run.rstrip("/")))
