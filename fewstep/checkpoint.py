"""Checkpoints: one safetensors file holding every state dict (net, EMA target, EMA, optimizer, RNG)
plus a JSON metadata entry with the training state; written atomically (temporary file, fsync,
os.replace), so a crash or a failing run never leaves a half-written or overwritten checkpoint."""

import json
import os
import tempfile

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import FewstepError

FORMAT = "fewstep-checkpoint-2"             # 2: optimizers by group name ("optim.GROUP."); 1 had one ("optim.")
JSON_NAMES = {str: "string", int: "number", float: "number", bool: "true/false", type(None): "null",
              list: "list", dict: "object"}
TMP_PREFIX = ".tmp-"        # a write in progress; a killed write leaves one, removed when the run starts again


def make_dir(path, what="output folder"):
    """os.makedirs(path, exist_ok=True), with one line when the place cannot hold a folder."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise FewstepError(f"{what} {path} is a file, not a folder; choose another path") from None
    except OSError as e:
        raise FewstepError(f"cannot create the {what} {path} ({e.strerror or e}); choose a writable place") from None
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call write(tmp_path) and then atomically move the finished file to path. Any failure (a full or
    read-only disk included) leaves the file at path as it was and no temporary file behind, and is
    raised as it came (an OSError), so the caller can say what was kept."""
    folder = os.path.dirname(os.path.abspath(path))
    make_dir(folder)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.basename(path))
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())        # mkstemp makes 0600; the file gets open()'s usual mode
        os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path, what="file", kind=None):
    """The JSON value in path; kind=dict (or list) also requires that type. Every failure is one line."""
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        raise FewstepError(f"{what} {path} not found; check the path") from None
    except IsADirectoryError:
        raise FewstepError(f"{what} {path} is a folder, not a JSON file; pass the file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FewstepError(f"{what} {path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); fix or delete it") from None
    except OSError as e:
        raise FewstepError(f"cannot read {what} {path} ({e.strerror or e}); check the path") from None
    if kind is not None and not isinstance(value, kind):
        shape = "an object {...}" if kind is dict else "a list [...]"
        found = JSON_NAMES.get(type(value), type(value).__name__)
        raise FewstepError(f"{what} {path} holds a JSON {found}, not {shape}; fix or replace it")
    return value


def flatten(prefix, state):
    """{prefix.key: tensor} from a state dict, cloned so that no two entries share memory."""
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}


def unflatten(prefix, tensors):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_to_tensors(optimizer, prefix="optim.net"):
    """(tensors, meta) for an optimizer's state dict: tensors by param index and name, the rest as JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for i, state in sd["state"].items():
        for name, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{i}.{name}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{i}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors, meta, prefix="optim.net"):
    state = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            i, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(i), {})[name] = v
    for key, v in meta["scalars"].items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path, tensors, meta):
    """Write tensors and a JSON-able meta dict to path atomically."""
    metadata = {"format": FORMAT, "meta": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path, missing, corrupt):
    """(tensors, header metadata) of a safetensors file; FewstepError `missing` for no file, and `corrupt`
    (formatted with {reason}) for one safetensors cannot read."""
    if not os.path.isfile(path):
        raise FewstepError(missing)
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            return tensors, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FewstepError(corrupt.format(reason=str(e).splitlines()[0][:80])) from None


def load_checkpoint(path):
    """(tensors, meta) from a checkpoint; a missing, truncated or foreign file raises FewstepError."""
    tensors, metadata = read_safetensors(
        path, f"no checkpoint at {path}; train first (fewstep train ... --out RUN) or check the path",
        f"checkpoint {path} is corrupt or truncated ({{reason}}); delete it and retrain, or restore it from a copy")
    if metadata.get("format") not in (FORMAT, FORMAT_1):
        raise FewstepError(f"{path} is not a fewstep checkpoint (format {metadata.get('format')!r}); "
                           "pass the run folder that fewstep train wrote")
    meta = json.loads(metadata["meta"])
    return (_from_format_1(tensors, meta) if metadata["format"] == FORMAT_1 else (tensors, meta))


FORMAT_1 = "fewstep-checkpoint-1"


def _from_format_1(tensors, meta):
    """A format-1 checkpoint (one optimizer, the one-network loop) read as format 2: its optimizer is group "net"."""
    tensors = {("optim.net." + k[len("optim."):] if k.startswith("optim.") else k): v for k, v in tensors.items()}
    return tensors, {**meta, "optimizers": {"net": meta.pop("optimizer")}}


def load_state(module, state, path, what="network"):
    """module.load_state_dict(state) with one clear line when the checkpoint does not fit the network."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, network has {tuple(own[wrong[0]].shape)}")
        raise FewstepError(f"checkpoint {path} does not match the {what} ({detail}); "
                           "use the network config the checkpoint was trained with (its run's config.json)")
    module.load_state_dict(state)
