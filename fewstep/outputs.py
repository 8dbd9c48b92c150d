"""Where commands write their outputs: a new numbered folder by default, and never over an earlier
output unless the user asks (--overwrite)."""

import glob
import os

from .checkpoint import make_dir
from .errors import FewstepError


def next_numbered(parent):
    """parent/000, parent/001, ...: the first free one, created, so that every call gets its own folder."""
    make_dir(parent)
    for i in range(100000):
        path = os.path.join(parent, f"{i:03d}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise FewstepError(f"cannot create the output folder {path} ({e.strerror or e}); pass --out DIR") from None
    raise FewstepError(f"{parent} holds 100000 numbered outputs; pass --out DIR")


def output_dir(out, default_parent, patterns, overwrite=False):
    """The folder to write: `out`, checked to hold no file matching `patterns` (glob names) unless
    overwrite; or, when out is None, a new numbered folder under default_parent."""
    if out is None:
        return next_numbered(default_parent)
    check_outputs(out, patterns, overwrite)
    return make_dir(str(out))


def check_outputs(out, patterns, overwrite=False):
    """One line, before any work, when `out` is unusable or holds outputs that would be replaced."""
    if out is None:
        return
    if not str(out).strip():
        raise FewstepError("--out is empty; pass the folder to write, or leave --out out for a new numbered one")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FewstepError(f"--out {out} is a file, not a folder; choose another --out")
    if not overwrite:
        taken = sorted(p for pattern in patterns for p in glob.glob(os.path.join(glob.escape(str(out)), pattern)))
        if taken:
            raise FewstepError(f"{taken[0]} already exists; pass --overwrite to replace it, or another --out "
                               "(or none: a new numbered folder)")
