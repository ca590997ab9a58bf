"""The files of the ``measure`` command, read as data only (torch.load with weights_only=True, never code):
a saved state dict built into a model by ``--arch``, and the samples of ``--data-file`` or ``--data``."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch


class CliError(Exception):
    """Bad input on the command line; the message says what to change."""


# Options that are sequences even when given one value (fnn:widths=32).
SEQUENCE_OPTIONS = ("widths", "channels")


def _parse_arch(spec: str) -> tuple[str, dict]:
    """``fnn:widths=500-500-500`` → ("fnn", {"widths": (500, 500, 500)}); booleans true/false."""
    name, _, rest = spec.partition(":")
    options: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise CliError(f"--arch option {item!r} is not key=value (example: fnn:widths=500-500-500)")
        if value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        else:
            try:
                numbers = tuple(int(v) for v in value.split("-"))
            except ValueError:
                raise CliError(f"--arch option {item!r}: expected whole numbers joined by '-'") from None
            options[key] = numbers if key in SEQUENCE_OPTIONS or len(numbers) > 1 else numbers[0]
    return name, options


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _existing_file(path: Path, flag: str) -> Path:
    if path.is_dir():
        raise CliError(f"{flag} {path} is a directory; give the file itself")
    if not path.is_file():
        raise CliError(f"{flag} {path} does not exist")
    return path


def _safe_load(path: Path, flag: str, expected: str):
    """torch.load with weights_only=True: a file is data, never code. torch's own message is not shown
    because it advises weights_only=False, which would run code from a file of unknown origin."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():  # torch words it "Unsupported global" or "unsupported GLOBAL"
            raise CliError(f"{flag} {path} holds Python objects besides tensors and plain containers; stabcheck "
                           f"loads files only as data (torch.load with weights_only=True): save {expected}") from None
        raise CliError(f"{flag} {path} is not a file written by torch.save, or it is damaged: expected {expected}") from None
    except Exception:  # noqa: BLE001 - truncated archive, EOF, bad pickle: all mean the same to the user
        raise CliError(f"{flag} {path} is not a file written by torch.save, or it is damaged: expected {expected}") from None


def load_model(path: Path, arch: str, in_shape, num_classes: int, outputs_from: str = "") -> torch.nn.Module:
    """A state dict saved with torch.save plus ``--arch``; returned in eval mode.

    ``outputs_from`` says where ``num_classes`` came from, for the message when the state dict does not fit.
    """
    from ..experiments.models import build_model

    _existing_file(path, "--model")
    if _is_torchscript(path):
        raise CliError(f"{path} is a TorchScript file: torch.func cannot evaluate TorchScript modules with other "
                       "parameters, so save the model's state dict (torch.save(model.state_dict(), path)) and pass --arch")
    state = _safe_load(path, "--model", "the state dict: torch.save(model.state_dict(), FILE)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CliError(f"--model {path} holds a {type(state).__name__}, not a state dict (names → tensors): "
                       "save it with torch.save(model.state_dict(), FILE)")
    name, options = _parse_arch(arch)
    try:
        model = build_model(name, seed=0, in_shape=in_shape, num_classes=num_classes, **options)
    except ValueError as err:
        raise CliError(f"--arch {arch}: {err}") from err
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        note = f" (the model was built with {num_classes} outputs, {outputs_from})" if outputs_from else ""
        raise CliError(f"the state dict in {path} does not fit --arch {arch}{note}: {mismatch}")
    model.load_state_dict(state)
    return model.eval()


def _state_mismatch(expected: dict, state: dict) -> str:
    """One clause on how ``state`` differs from the model's own state dict ``expected`` ('' if it fits)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} is {tuple(state[k].shape)} where the model has {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = [f"{len(missing)} tensor(s) missing (first {missing[0]!r})" if missing else "",
             f"{len(unexpected)} unexpected (first {unexpected[0]!r})" if unexpected else "",
             f"{len(shapes)} of another shape (first: {shapes[0]})" if shapes else ""]
    return ", ".join(p for p in parts if p)


def load_data(args) -> tuple[torch.Tensor, torch.Tensor, tuple, int, str]:
    """(inputs, targets for --loss, one sample's input shape, number of classes, where that number came from)."""
    if args.data_file:
        return _load_data_file(Path(args.data_file), args.loss, args.n)
    from ..experiments.data import DataNotFoundError, DataRequestError, load_dataset

    try:
        ds = load_dataset(args.data, args.n, data_dir=args.data_dir, with_test=False)
    except (DataNotFoundError, DataRequestError) as err:
        raise CliError(str(err)) from err
    return ds.inputs, ds.targets(args.loss), tuple(ds.inputs.shape[1:]), ds.num_classes, ""


def _load_data_file(path: Path, loss: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor, tuple, int, str]:
    expected = "a dict with 'inputs' and 'targets' tensors: torch.save({'inputs': x, 'targets': y}, FILE)"
    blob = _safe_load(_existing_file(path, "--data-file"), "--data-file", expected)
    if not isinstance(blob, dict):
        raise CliError(f"--data-file {path} holds a {type(blob).__name__}, not {expected}")
    if "inputs" not in blob or "targets" not in blob:
        raise CliError(f"--data-file {path} must hold {expected}; found keys {sorted(map(str, blob))}")
    x, y = blob["inputs"], blob["targets"]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.ndim == 0 or y.ndim == 0:
        raise CliError(f"--data-file {path}: 'inputs' and 'targets' must be tensors with the samples along dimension 0")
    if x.shape[0] != y.shape[0]:
        raise CliError(f"--data-file {path} holds {x.shape[0]} inputs but {y.shape[0]} targets")
    if n is not None and n > x.shape[0]:
        raise CliError(f"--n {n} asks for more samples than --data-file {path} holds ({x.shape[0]})")
    if n is not None:
        x, y = x[:n], y[:n]
    # The output size is read from the targets, so they must be of the kind --loss takes.
    if loss == "ce":
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
            raise CliError(f"--loss ce needs integer class labels of shape (n,) as 'targets'; --data-file {path} "
                           f"holds {y.dtype} targets of shape {tuple(y.shape)}: use --loss mse for one-hot or "
                           "real-valued targets, or store the labels")
        return x, y, tuple(x.shape[1:]), int(y.max()) + 1, f"the largest label + 1 in --data-file {path}"
    if not y.is_floating_point():
        raise CliError(f"--loss {loss} needs real-valued targets (one-hot rows for classification); --data-file "
                       f"{path} holds {y.dtype} targets of shape {tuple(y.shape)}: use --loss ce for integer "
                       "labels, or store one-hot targets")
    k = y.shape[1] if y.ndim > 1 else 1
    return x, y, tuple(x.shape[1:]), k, f"the width of the targets in --data-file {path}"
