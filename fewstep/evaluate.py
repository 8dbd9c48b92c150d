"""`fewstep eval`: sample quality against NFE for an image run, measured offline.

For each step count: n samples, their features in the shipped Fashion-MNIST classifier, the Frechet
distance (FD) and improved precision/recall (k = 3) against the test split's features, sampling speed,
and a PNG grid; for a class-conditional run also how often the classifier's top-1 is the requested class
(seed 004's CLIP score in kind). Writes RUN/eval/{metrics.json, metrics.md, fd_vs_nfe.png, samples_<steps>.png}.
"""

import json
import os
import time

import torch

from .data.images import FashionMNIST
from .errors import FewstepError
from .generate import check_sampling, generate, pick_sampler, run_kind
from .guidance import embeds, guide
from .metrics.fd import extract_features, fd_from_features
from .metrics.features import load_feature_net
from .metrics.precision_recall import precision_recall
from .checkpoint import make_dir
from .outputs import check_outputs, output_dir
from .plots import image_grid, line_plot
from .runs import load_decoder, load_model

FEATURE_SHAPE = (1, 28, 28)     # what the shipped Fashion-MNIST classifier takes
OUTPUTS = ["metrics.json", "metrics.md", "fd_vs_nfe.png", "samples_*steps.png"]
MAX_PAD = 4                     # images may be padded up to 32 px for the U-Net; crop_to removes it


def reference_features(feature_net, n=10000):
    """Features of the first n Fashion-MNIST test images (the reference set of every table)."""
    test = FashionMNIST("test")
    return extract_features(feature_net, test.images[:n].float() / 127.5 - 1)


def score(feature_net, x, ref, progress=False):
    """(features, {fd, precision, recall}) of images x in [-1, 1] against reference features, in the shipped
    classifier's feature space (precision/recall with k = 3)."""
    feats = extract_features(feature_net, crop_to(x.cpu(), 28), progress=progress)
    return feats, {"fd": fd_from_features(feats, ref), **precision_recall(ref, feats, k=3)}


def crop_to(x, size):
    """Centre-crop images padded for the U-Net (32 px) back to the classifier's 28 px."""
    off = (x.shape[-1] - size) // 2
    return x[..., off:off + size, off:off + size] if off > 0 else x


@torch.no_grad()
def sample_images(model, cfg, n, steps, *, sampler=None, taus=None, guidance=0.0, classifier=None, batch=500, seed=0,
                  gamma=0.0, decoder=None):
    """(images in [-1, 1], NFE, images/s): n samples in batches, class labels balanced when conditional.
    guidance w: classifier-free for a conditional run, or classifier guidance with `classifier`.
    taus: explicit consistency time points instead of `steps` (Algorithm 1, seed 000).
    decoder: a latent run's decode (runs.load_decoder), applied to each batch before clamping."""
    if n < 1:
        raise FewstepError(f"the number of samples must be at least 1, got {n}")
    g, device = torch.Generator().manual_seed(seed), next(model.parameters()).device
    shape = model.net.img_shape
    num_classes = classifier.num_classes if classifier is not None else model.net.num_classes
    model = guide(model, cfg, guidance, classifier)
    out, t0, nfe = [], time.perf_counter(), 0
    for i in range(0, n, batch):
        m = min(batch, n - i)
        conditional = cfg.cond or classifier is not None
        # balanced labels, on the model's device (CUDA too); an unconditional run has none (num_classes 0)
        cond = {"class_labels": torch.arange(i, i + m, device=device) % num_classes} if conditional else None
        x, nfe = generate(model, cfg, m, steps, sampler=sampler, taus=taus, generator=g, cond=cond, shape=shape,
                          gamma=gamma)
        out.append((decoder(x) if decoder is not None else x).clamp(-1, 1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)          # CUDA runs asynchronously: the clock waits for the last batch
    return torch.cat(out), nfe, n / (time.perf_counter() - t0)


def evaluate(run, steps, n=10000, sampler=None, guidance=0.0, classifier_run=None, seed=0, out=None,
             overwrite=False, progress=True, gamma=0.0):
    """Rows {steps, nfe, fd, precision, recall, images_per_sec} for each step count; writes the outputs
    to `out` (default: a new numbered folder RUN/eval/NNN; earlier outputs are kept unless overwrite)."""
    model, cfg = load_model(run)
    classifier = load_classifier(classifier_run) if classifier_run else None
    decoder = load_decoder(cfg)
    check_evaluable(run, model, cfg, guidance, classifier, decoder)
    check_sampling(cfg, sampler, model=model, steps=steps, gamma=gamma)
    check_outputs(out, OUTPUTS, overwrite)
    if out is not None:
        make_dir(out)               # an unwritable --out fails now, not after sampling
    feature_net = load_feature_net()
    ref = reference_features(feature_net)
    out = output_dir(out, os.path.join(run, "eval"), OUTPUTS, overwrite)
    rows = []
    for s in steps:
        x, nfe, rate = sample_images(model, cfg, n, s, sampler=sampler, guidance=guidance, classifier=classifier, seed=seed,
                                     gamma=gamma, decoder=decoder)
        feats, scores = score(feature_net, x, ref, progress)
        rows.append({"steps": s, "nfe": nfe, **scores, "images_per_sec": rate})
        if cfg.cond or classifier is not None:
            rows[-1]["class_match"] = class_match(feature_net, feats, requested_labels(n, model, classifier))
        image_grid(x[:100], os.path.join(out, f"samples_{s}steps.png"), nrow=10)
        print(format_row(rows[-1]), flush=True)
    _write(out, rows, run)
    return rows


def requested_labels(n, model, classifier=None):
    """The labels sample_images asks for: balanced, i % num_classes."""
    return torch.arange(n) % (classifier.num_classes if classifier is not None else model.net.num_classes)


@torch.no_grad()
def class_match(feature_net, features, labels):
    """How often the shipped classifier's top-1 on a sample is the class it was asked for."""
    logits = feature_net.head(features.to(feature_net.head.weight.dtype))
    return (logits.argmax(1) == labels[: len(logits)]).double().mean().item()


def load_classifier(run):
    """The noise-conditional classifier of a `fewstep train classifier` run, for classifier guidance."""
    model, cfg = load_model(run)
    if cfg.method != "classifier":
        raise FewstepError(f"--classifier {run} is a {cfg.method!r} run, not a guidance classifier; train one with: "
                           "fewstep train classifier --net classifier --set cond=true --out RUN")
    return model


def check_guidance(run, model, cfg, guidance, classifier=None):
    """One line for a guidance scale the run cannot take (sample and eval)."""
    if embeds(model, "w"):                                              # LCM: w is an input of the model
        options = {**cfg.method_defaults(), **cfg.method_kwargs}
        lo, hi = (float(options[k]) for k in ("w_min", "w_max"))
        if not lo <= guidance <= hi:
            raise FewstepError(f"run {run} learned the guidance scale w in [{lo:g}, {hi:g}]; pass --guidance within it"
                               + ("" if cfg.cond else " (an unconditional run: leave --guidance out)"))
        return
    if not guidance or classifier is not None:
        return
    if cfg.method in ("lcm", "lcm-lora"):
        raise FewstepError(f"run {run} was distilled at one fixed guidance scale (w={cfg.method_kwargs.get('w', 0)}); "
                           "leave --guidance out")
    if not cfg.cond:
        raise FewstepError("--guidance needs a class-conditional run (cond=true, label_dropout > 0) or --classifier RUN")
    if not cfg.label_dropout:
        raise FewstepError(f"--guidance needs a run that learned the null label; {run} was trained with label_dropout=0: "
                           "retrain it with --set label_dropout=0.1 (or guide with --classifier RUN)")


def check_evaluable(run, model, cfg, guidance, classifier, decoder=None):
    """One line, before any data is read, for a run (or guidance) that eval cannot measure. decoder: a latent
    run's (runs.load_decoder); the decoded images are what is measured."""
    if cfg.method == "classifier":
        raise FewstepError(f"run {run} is a guidance classifier, not a generator; evaluate a teacher with "
                           f"--classifier {run} --guidance W")
    if not run_kind(cfg).generates:
        pick_sampler(cfg)               # one line: what the run is for instead
    check_guidance(run, model, cfg, guidance, classifier)
    shape = getattr(getattr(model, "net", None), "img_shape", None)
    if shape is None:
        raise FewstepError(f"run {run} is not an image model; fewstep eval measures image runs "
                           "(use fewstep sample for 2-D runs)")
    if decoder is not None:
        shape = tuple(decoder(torch.zeros(1, *shape, device=next(model.parameters()).device)).shape[1:])
    C, H, W = shape
    if C != FEATURE_SHAPE[0] or H != W or not FEATURE_SHAPE[1] <= H <= FEATURE_SHAPE[1] + MAX_PAD:
        raise FewstepError(f"run {run} makes {C}x{H}x{W} images; fewstep eval measures them in a Fashion-MNIST "
                           f"classifier that takes 1x28x28 (padded to at most 32 px); use fewstep sample for a grid")


def format_row(r):
    match = f"  class match {r['class_match']:.3f}" if "class_match" in r else ""
    return (f"steps {r['steps']:>4}  NFE {r['nfe']:>4}  FD {r['fd']:8.3f}  precision {r['precision']:.3f}  "
            f"recall {r['recall']:.3f}{match}  {r['images_per_sec']:8.1f} images/s")


def _write(out, rows, run):
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=2)
    match = "class_match" in rows[0]
    lines = ["| steps | NFE | FD | precision | recall |" + (" class match |" if match else "") + " images/s |",
             "|---|---|---|---|---|" + ("---|" if match else "") + "---|"]
    lines += [f"| {r['steps']} | {r['nfe']} | {r['fd']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              + (f"{r['class_match']:.3f} | " if match else "") + f"{r['images_per_sec']:.1f} |" for r in rows]
    with open(os.path.join(out, "metrics.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    line_plot([r["nfe"] for r in rows], [r["fd"] for r in rows], os.path.join(out, "fd_vs_nfe.png"),
              xlabel="NFE", ylabel="FD (Fashion-MNIST classifier features)", title=os.path.basename(run.rstrip("/")))
