"""`fewstep compare`: its arguments and their checks; the work is fewstep.compare's (imported inside, so
`fewstep --help` does not load torch)."""

from ..errors import FewstepError


def add_parser(sub):
    """The `compare` subcommand on build_parser's subparsers."""
    from . import folder, positive_int
    c = sub.add_parser("compare", help="every few-step method under one budget rule: 2-D and Fashion-MNIST tables",
                       description="Train an EDM teacher (2B steps) and every few-step method from it or from data "
                       "(B steps each: cd, ct, ict, cd-continuous, ct-continuous, ctm, kd, pd, rf, reflow, dmd, sds, "
                       "add, lcm with its own DDPM teacher), each in its own process, and measure them at every step "
                       "count they sample with: sliced W2 and mode statistics on the 2-D mixture (mean ± sd over "
                       "seeds), FD and precision/recall on Fashion-MNIST, with samples/s, training seconds, teacher "
                       "calls and peak memory. Writes OUT/compare.md, compare.json and pictures; re-running reuses "
                       "finished runs.")
    c.add_argument("--data", default="2d,fmnist", help="2d, fmnist or 2d,fmnist (default)")
    c.add_argument("--methods", help="a subset, e.g. cd,kd,pd (their teachers train too; default: all)")
    c.add_argument("--budget", type=positive_int, help="B: training steps of each few-step method; the teacher "
                   "trains 2B (default 2000; --fast 20)")
    c.add_argument("--seeds", help="2-D seeds, e.g. 0,1,2 (default; --fast 0); Fashion-MNIST uses the first")
    c.add_argument("--n", type=positive_int, help="samples per row (default 4000 on 2-D and 2000 images; --fast 500 "
                   "and 100)")
    c.add_argument("--fast", action="store_true", help="a smoke test: B = 20, tiny networks and batches, one seed, "
                   "few samples (a few minutes on 2 CPU cores)")
    c.add_argument("--out", default="compare_out", type=folder, help="output folder (default compare_out)")
    c.set_defaults(func=run)


def parse_list(text, flag, valid=None, kind=str):
    """'a,b' -> ['a', 'b'], checked; anything else is one FewstepError."""
    items = [item.strip() for item in text.split(",")]
    try:
        items = [kind(item) for item in items]
    except ValueError:
        items = []
    if not items or any(item in ("", None) or (kind is int and item < 0) for item in items):
        raise FewstepError(f"{flag} expects items separated by commas, like {'0,1,2' if kind is int else 'cd,kd'}; "
                           f"got {text!r}")
    if valid is not None and any(item not in valid for item in items):
        raise FewstepError(f"{flag}: unknown {', '.join(i for i in items if i not in valid)}; choose from "
                           f"{', '.join(valid)}")
    return list(dict.fromkeys(items))


def command_line(args, s, data, methods):
    """The command as it ran, every setting written out (the header of compare.md)."""
    words = ["fewstep compare", "--data", ",".join(data), "--budget", str(s.budget), "--seeds",
             ",".join(map(str, s.seeds)), "--out", args.out]
    if methods:
        words += ["--methods", ",".join(methods)]
    if args.n:
        words += ["--n", str(args.n)]
    return " ".join(words + (["--fast"] if args.fast else []))


MIN_N = 10


def run(args):
    from ..compare import DATASETS, make_settings, run_compare, select, plan
    data = parse_list(args.data, "--data", DATASETS)
    methods = parse_list(args.methods, "--methods") if args.methods is not None else None
    if methods:
        select(plan("2d", make_settings()), methods)        # a bad name stops here, before anything trains
    seeds = tuple(parse_list(args.seeds, "--seeds", kind=int)) if args.seeds is not None else None
    if args.n is not None and args.n < MIN_N:
        raise FewstepError(f"--n {args.n} is too few samples to score (FD, precision/recall with k = 3); pass "
                           f"--n {MIN_N} or more")
    s = make_settings(args.fast, budget=args.budget, seeds=seeds, n_2d=args.n, n_images=args.n)
    run_compare(args.out, data, methods, s, command_line(args, s, data, methods))
