"""`fewstep edit TASK RUN`: zero-shot editing from PNG/JPEG inputs (or the run's own test images) to PNGs.

Reads the inputs, turns them into the task's observation (fewstep.editing), runs the run's sampler and
writes OUT/TASK.png: one row per input, [observation | results ... | reference when known], plus each
result as OUT/TASK_<input>_<sample>.png. Every bad input is one FewstepError line.
"""

import dataclasses
import os

import numpy as np
import torch

from ..data.images import _unreadable
from ..editing import (LUMA, Colorization, Inpainting, SuperResolution, box_hole, denoise, interpolate,
                      solve_inverse, stroke_guided)
from ..errors import FewstepError
from ..generate import pick_sampler, run_process
from ..guidance import embeds, guide
from ..sampling import FEW_STEP_SAMPLERS
from ..outputs import check_outputs, output_dir
from ..plots import image_grid, save_image
from ..runs import build_dataset, load_config, load_model

INVERSE_STEPS = 8      # a CM re-imposes the observation after each of its steps: more steps, more coherent fills

#----------------------------------------------------------------------------
# Inputs.


def read_image(path):
    """A PNG/JPEG as a float (C, H, W) tensor in [-1, 1], C = 1 for grayscale files, else 3 (alpha dropped)."""
    from PIL import Image
    if not os.path.isfile(path):
        raise FewstepError(f"input image not found: {path}; check the path")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy()).float() / 127.5 - 1


def read_mask(path, size):
    """A hole mask from an image: True where the pixel is bright (> 50% gray), i.e. white = generate."""
    mask = read_image(path).mean(0) > 0
    if tuple(mask.shape) != size:
        raise FewstepError(f"mask {path} is {mask.shape[1]} x {mask.shape[0]} pixels but the run's images are "
                           f"{size[1]} x {size[0]}; draw the mask at the images' size")
    return mask


def parse_ints(text, n, flag, upper=2 ** 62):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n or not all(0 <= v < upper for v in values):
        raise FewstepError(f"{flag} expects {n} integers in [0, {upper if upper < 2 ** 62 else '2**62'}) separated "
                           f"by commas, got {text!r}")
    return values


def test_images(cfg, n):
    """The first n images (and labels) of the run's dataset, its test split when it has one."""
    kwargs = dict(cfg.data_kwargs)
    if cfg.data.startswith("fashion-mnist"):
        kwargs["split"] = "test"
    data = build_dataset(dataclasses.replace(cfg, data_kwargs=kwargs))
    if not hasattr(data, "images"):
        raise FewstepError(f"--from-data needs an image dataset; run's data is {cfg.data!r}")
    idx = torch.arange(min(n, len(data.images)))
    labels = data.labels[idx] if data.labels is not None else None
    return data.images[idx].float() / 127.5 - 1, labels


def check_shape(y, shape, path, what="input"):
    C, H, W = shape
    if y.shape[-2:] != (H, W):
        raise FewstepError(f"{what} {path} is {y.shape[-1]} x {y.shape[-2]} pixels but the run makes {W} x {H}; "
                           f"resize it to {W} x {H}")
    if y.shape[0] != C:
        raise FewstepError(f"{what} {path} has {y.shape[0]} channel(s) but the run makes {C}; "
                           f"convert it to {'grayscale' if C == 1 else 'RGB'}")

#----------------------------------------------------------------------------
# Observations: (constraint, measurements, what to show) per task.


def observe(task, args, images, paths, shape):
    """(constraint, measurements m, observation images to show) for inpaint / colorize / superres."""
    C, H, W = shape
    if task == "inpaint":
        if bool(args.mask) == bool(args.box):
            raise FewstepError("inpainting needs exactly one of --mask MASK.png (white = fill) or --box x0,y0,x1,y1")
        hole = read_mask(args.mask, (H, W)) if args.mask else box_hole((H, W), parse_ints(args.box, 4, "--box"))
        for y, p in zip(images, paths):
            check_shape(y, shape, p)
        c = Inpainting(hole)
        m = c.measure(torch.stack(images))
        return c, m, c.view(m)
    if task == "colorize":
        if C != 3:
            raise FewstepError(f"colorization needs a run trained on RGB images, this one makes {C} channel(s); "
                               "train one with --data fashion-mnist-rgb or an RGB folder")
        c = Colorization(LUMA)
        grays = []
        for y, p in zip(images, paths):
            check_shape(y if y.shape[0] == 1 else y[:1], (1, H, W), p)   # gray, or RGB reduced to its luminance
            grays.append(y if y.shape[0] == 1 else c.measure(y[None])[0])
        m = torch.stack(grays)
        return c, m, c.view(m)
    c = SuperResolution(args.factor)
    if W % args.factor or H % args.factor:
        raise FewstepError(f"--factor {args.factor} does not divide the run's {W} x {H} images; "
                           f"use a divisor such as {min(f for f in range(2, W + 1) if W % f == 0)}")
    lows = []
    for y, p in zip(images, paths):
        full = tuple(y.shape[-2:]) == (H, W)
        check_shape(y, (C, H, W) if full else (C, H // args.factor, W // args.factor), p,
                    "input (full-size or low-resolution)")
        lows.append(c.measure(y[None])[0] if full else y)
    m = torch.stack(lows)
    return c, m, c.view(m)


def strokes_from(images, block=4, levels=4):
    """Coarse stroke paintings from images: block-averaged, then posterized to a few levels per channel."""
    c = SuperResolution(block)
    coarse = c.view(c.measure(images))
    return (((coarse + 1) / 2 * (levels - 1)).round() / (levels - 1)) * 2 - 1

#----------------------------------------------------------------------------
# The command.


def _cond(cfg, labels, n, args):
    if not cfg.cond:
        if args.label is not None:
            raise FewstepError("--label is for class-conditional runs; this run is unconditional: leave --label out")
        return None
    if labels is None:
        if args.label is None:
            raise FewstepError("this run is class-conditional; pass --label K" + ("" if args.task == "interpolate"
                               else " (or use --from-data for the images' labels)"))
        labels = torch.full((n,), args.label, dtype=torch.long)
    return {"class_labels": labels}


def _inputs(args, cfg):
    if bool(args.input) == bool(args.from_data):
        raise FewstepError("give the images with --input IMAGE [IMAGE ...] or --from-data N (the run's test images)")
    if args.from_data:
        images, labels = test_images(cfg, args.from_data)
        return list(images), [f"test image {i}" for i in range(len(images))], labels
    return [read_image(p) for p in args.input], list(args.input), None


def _repeat(x, k):
    return None if x is None else x.repeat_interleave(k, 0)


def run_edit(args):
    if load_config(args.run).data == "latents":
        raise FewstepError(f"fewstep edit imposes measurements on pixels; {args.run} was trained on latents "
                           "(data=latents): edit a run trained on the images themselves")
    if args.score:
        return run_scores(args)
    check_outputs(args.out, _outputs(args.task), args.overwrite)
    model, cfg = load_model(args.run, args.which)
    pick_sampler(cfg, args.sampler)
    if embeds(model, "w"):                  # LCM: edits at the lowest guidance scale it learned (w_min, default 0)
        model = guide(model, cfg, float({**cfg.method_defaults(), **cfg.method_kwargs}["w_min"]))
    shape = tuple(model.net.img_shape) if hasattr(model.net, "img_shape") else None
    if shape is None:
        raise FewstepError(f"fewstep edit works on image runs; {args.run} was trained on flat {cfg.data!r} data")
    g = torch.Generator().manual_seed(args.seed)
    k = args.samples if args.samples is not None else (1 if args.task == "denoise" else 3)  # denoising is deterministic
    if k < 1:
        raise FewstepError(f"--samples must be at least 1, got {k}")
    if args.steps is not None and args.steps < 1:
        raise FewstepError(f"--steps must be at least 1, got {args.steps}")
    cm = pick_sampler(cfg, args.sampler) in FEW_STEP_SAMPLERS             # few-step samplers
    ode_steps = getattr(run_process(model, cfg), "N", 18)                  # a PD round walks its own grid
    if args.task == "interpolate":
        if args.input or args.from_data:
            raise FewstepError("interpolate mixes two seeds' noise (--seeds) and takes no input images; leave out "
                               "--input and --from-data" + (" and pass --label K" if cfg.cond else ""))
        strip, nfe = interpolate(model, cfg, parse_ints(args.seeds, 2, "--seeds"), args.frames,
                                 args.steps or (1 if cm else ode_steps), sampler=args.sampler, cond=_cond(cfg, None, 1, args))
        return _write(args, [strip], [strip], nfe, ncol=args.frames)
    images, paths, labels = _inputs(args, cfg)
    reference = torch.stack(images) if args.from_data else None
    steps = args.steps or (INVERSE_STEPS if cm else ode_steps)
    if args.task in ("inpaint", "colorize", "superres"):
        c, m, view = observe(args.task, args, images, paths, shape)
        x, nfe = solve_inverse(model, cfg, _repeat(m, k), c, steps, sampler=args.sampler, generator=g,
                               cond=_cond(cfg, _repeat(labels, k), len(m) * k, args))
    else:
        for y, p in zip(images, paths):
            check_shape(y, shape, p)
        y = torch.stack(images)
        sigma = args.sigma if args.sigma is not None else (1.0 if args.task == "stroke" else 0.5)
        cond = _cond(cfg, _repeat(labels, k), len(y) * k, args)
        if args.task == "stroke":
            view = strokes_from(y) if args.from_data else y
            x, nfe = stroke_guided(model, cfg, _repeat(view, k), sigma, args.steps or (1 if cm else ode_steps), sampler=args.sampler, generator=g, cond=cond)
        else:
            if args.from_data or args.add_noise:
                y = y + sigma * torch.randn(y.shape, generator=g)
            view = y
            x, nfe = denoise(model, cfg, _repeat(y, k), sigma, args.steps or 1, sampler=args.sampler,
                             generator=g, cond=cond)
    x = x.reshape(len(view), k, *shape)
    rows = [torch.cat([view[i:i + 1], x[i]] + ([reference[i:i + 1]] if reference is not None else []))
            for i in range(len(view))]
    return _write(args, rows, x, nfe, ncol=1 + k + (reference is not None))


def _outputs(task):
    return [f"{task}.png", f"{task}_*.png"]


def _write(args, rows, results, nfe, ncol):
    """The grid OUT/TASK.png and each result as OUT/TASK_<row>_<sample>.png."""
    args.out = output_dir(args.out, os.path.join(args.run, "edit"), _outputs(args.task), args.overwrite)
    grid = os.path.join(args.out, f"{args.task}.png")
    image_grid(torch.cat(rows), grid, nrow=ncol)
    for i, row in enumerate(results):
        for j, image in enumerate(row):
            save_image(image, os.path.join(args.out, f"{args.task}_{i}_{j}.png"))
    print(f"{args.task}: {len(rows)} row(s) x {ncol} -> {grid} ({nfe} NFE per result); "
          f"results in {args.out}/{args.task}_<row>_<sample>.png")
    return grid

#----------------------------------------------------------------------------
# Scores for BENCHMARKS: how realistic the edited images are, against the number of steps.


def run_scores(args):
    """`fewstep edit inpaint|superres RUN --score 1,2,4,8`: print and save the table of `edit_scores`."""
    import json

    from ..generate import parse_steps
    if args.task not in ("inpaint", "superres"):
        raise FewstepError(f"--score measures inpaint and superres on Fashion-MNIST, not {args.task}")
    check_outputs(args.out, [f"{args.task}_scores.json"], args.overwrite)
    rows = edit_scores(args.run, args.task, parse_steps(args.score), n=args.n, sampler=args.sampler, seed=args.seed)
    args.out = output_dir(args.out, os.path.join(args.run, "edit"), [f"{args.task}_scores.json"], args.overwrite)
    lines = ["| run | task | steps | NFE | FD | max error on the known part | images/s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {args.run} | {r['task']} | {r['steps']} | {r['nfe']} | {r['fd']:.2f} | {r['known_error']:.1e} | "
              f"{r['images_per_sec']:.0f} |" for r in rows]
    print("\n".join(lines))
    with open(os.path.join(args.out, f"{args.task}_scores.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


def edit_scores(run, task, steps, n=1000, sampler=None, batch=250, seed=0):
    """Rows {task, steps, nfe, fd, known_error, images_per_sec}: the first n Fashion-MNIST test images
    edited (inpaint: the centre 14 x 14 box; superres: 4 x 4 blocks), FD of the results against the
    test split in the shipped classifier's features, and the largest deviation from the measurement."""
    import time

    from ..evaluate import reference_features
    from ..metrics.fd import extract_features, fd_from_features
    from ..metrics.features import load_feature_net
    model, cfg = load_model(run)
    if tuple(model.net.img_shape) != (1, 28, 28):
        raise FewstepError(f"edit scores use the Fashion-MNIST feature classifier (1 x 28 x 28 images); run {run} "
                           f"makes {tuple(model.net.img_shape)}")
    images, _ = test_images(cfg, n)
    c = Inpainting(box_hole(images.shape[-2:], (7, 7, 21, 21))) if task == "inpaint" else SuperResolution(4)
    net = load_feature_net()
    ref = reference_features(net)
    rows = []
    for s in steps:
        g, out, t0 = torch.Generator().manual_seed(seed), [], time.perf_counter()
        for i in range(0, n, batch):
            x, nfe = solve_inverse(model, cfg, c.measure(images[i:i + batch]), c, s, sampler=sampler, generator=g)
            out.append(x)
        rate, x = n / (time.perf_counter() - t0), torch.cat(out)
        error = (c.measure(x.double()) - c.measure(images.double())).abs().max().item()
        rows.append({"task": task, "steps": s, "nfe": nfe, "fd": fd_from_features(extract_features(net, x.clamp(-1, 1)), ref),
                     "known_error": error, "images_per_sec": rate})
    return rows
