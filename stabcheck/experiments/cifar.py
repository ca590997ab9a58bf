"""CIFAR-10: the first n training images of the chosen classes (default 0/1, K = 2) in original
order, or of all classes, pixels/255.

Sources, in order: a torchvision root (``data_dir`` or env ``STABCHECK_DATA_DIR``), a folder of the
offline npz subsets (``offline_dir`` or env ``STABCHECK_OFFLINE_DATA``; exact pixels only unless
``allow_jpeg``), torchvision's download (into ``download_root``, default ``~/.cache/stabcheck/data``).
The batches of a torchvision root are pickles: they are read as data only (:func:`read_cifar_batch`),
and the npz files without pickle.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .dataset import (DOWNLOAD_ROOT, HOW_TO_GET, DataNotFoundError, DataRequestError, Dataset, check_n,
                      images_to_tensor)

CIFAR_TRAIN_SIZE = 50_000


def _check_classes(classes: Sequence[int] | None) -> tuple[int, ...]:
    if classes is None:
        return tuple(range(10))
    classes = tuple(int(c) for c in classes)
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c < 10 for c in classes):
        raise DataRequestError(f"classes must be distinct CIFAR-10 labels in 0..9, got {classes}")
    return classes


def _select(labels: np.ndarray, classes: tuple[int, ...], n: int | None, what: str):
    """Rows of the first n samples whose label is in ``classes`` (original order) and their labels
    renumbered 0..K−1 in the order of ``classes``."""
    rows = np.flatnonzero(np.isin(labels, classes))
    rows = rows[:check_n(n, len(rows), what)]
    remap = np.full(10, -1, dtype=np.int64)
    remap[list(classes)] = np.arange(len(classes))
    return rows, remap[labels[rows]]


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds only containers, numbers, strings and numpy arrays: any other global
    (``os.system``, a class whose ``__reduce__`` runs code) is refused before it is called."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name}")
        if module.startswith("numpy.core."):  # the name in Python 2 era pickles (the CIFAR-10 files)
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N×32×32×3, labels) of a ``cifar-10-batches-py`` file, unpickled as data only.

    The files are pickles; :class:`DataRequestError` refuses one that would build anything but
    containers, numbers, strings and arrays (it could run code), or that lacks ``data`` and ``labels``.
    """
    try:
        with open(path, "rb") as fh:
            d = _ArraysOnly(fh, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DataRequestError(f"{path} is not a CIFAR-10 batch of plain arrays ({err} is not allowed): stabcheck "
                               "never runs code from a data folder; replace cifar-10-batches-py by the original "
                               "files (https://www.cs.toronto.edu/~kriz/cifar.html)") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise DataRequestError(f"{path} is damaged or not a CIFAR-10 batch ({type(err).__name__}); replace it by "
                               "the original file") from None
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise DataRequestError(f"{path} is not a CIFAR-10 batch: expected a dict with 'data' and 'labels'")
    images = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(d["labels"], dtype=np.int64)


def _cifar_torchvision(folder: Path, classes, n, with_test) -> Dataset:
    parts = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    rows, labels = _select(y, classes, n, f"CIFAR-10 training images of classes {classes}")
    ds = Dataset(
        name="cifar10", inputs=images_to_tensor(x[rows]), labels=torch.from_numpy(labels), test_inputs=None,
        test_labels=None, num_classes=len(classes), classes=classes, source=f"torchvision root: {folder}",
        train_index=torch.from_numpy(rows.astype(np.int64)),
    )
    if with_test:
        x, y = read_cifar_batch(folder / "test_batch")
        rows, labels = _select(y, classes, None, "CIFAR-10 test images")
        ds.test_inputs, ds.test_labels = images_to_tensor(x[rows]), torch.from_numpy(labels)
    return ds


def _cifar_offline(folder: Path, classes, n, with_test, allow_jpeg) -> Dataset:
    """From cifar10_all_subset.npz (exact; train 0..3999, test 0..999), and with ``allow_jpeg`` from
    cifar10_subset.npz (classes 0/1 only, partly JPEG-decoded, counted in the notes)."""
    what = f"CIFAR-10 training images of classes {classes}"
    exact = np.load(folder / "cifar10_all_subset.npz", allow_pickle=False)
    rows, labels = _select(exact["train_labels"], classes, None, what)
    need = len(rows) if n is None else check_n(n, CIFAR_TRAIN_SIZE, what)
    notes: list[str] = []
    jpeg_ok = allow_jpeg and set(classes) <= {0, 1}
    if need <= len(rows):
        train = exact
        source = f"offline npz: {folder / 'cifar10_all_subset.npz'}"
    elif jpeg_ok:
        train = np.load(folder / "cifar10_subset.npz", allow_pickle=False)
        rows, labels = _select(train["train_labels"], classes, need, what)
        source = f"offline npz: {folder / 'cifar10_subset.npz'}"
        lossy = int((~train["train_lossless"][rows]).sum())
        notes.append(f"{lossy} of {need} training images are JPEG-decoded (allow_jpeg=True)")
    else:
        hint = ("pass allow_jpeg=True to add the JPEG-decoded images of cifar10_subset.npz"
                if set(classes) <= {0, 1} else "the offline files hold no more images of these classes")
        raise DataRequestError(
            f"asked for the first {need} {what}, but {folder} holds only {len(rows)} with exact pixels; {hint}, "
            "or use a torchvision root (--data-dir) with the full dataset"
        )
    rows, labels = rows[:need], labels[:need]
    ds = Dataset(
        name="cifar10", inputs=images_to_tensor(train["train_images"][rows]), labels=torch.from_numpy(labels),
        test_inputs=None, test_labels=None, num_classes=len(classes), classes=classes, source=source,
        notes=notes, train_index=torch.from_numpy(train["train_index"][rows].astype(np.int64)),
    )
    if with_test:
        if jpeg_ok:
            test = np.load(folder / "cifar10_subset.npz", allow_pickle=False)
            rows, labels = _select(test["test_labels"], classes, None, "CIFAR-10 test images")
            lossy = int((~test["test_lossless"][rows]).sum())
            notes.append(f"test set: all {len(rows)} test images of classes {classes}, {lossy} JPEG-decoded")
        else:
            test = exact
            rows, labels = _select(test["test_labels"], classes, None, "CIFAR-10 test images")
            notes.append(f"test set: the {len(rows)} test images of classes {classes} among test images 0..999 "
                         "(exact pixels; not the full test set)")
        ds.test_inputs, ds.test_labels = images_to_tensor(test["test_images"][rows]), torch.from_numpy(labels)
    return ds


def _offline_candidates(offline_dir) -> list[Path]:
    out = []
    for p in (offline_dir, os.environ.get("STABCHECK_OFFLINE_DATA")):
        if p and Path(p).expanduser() not in out:
            out.append(Path(p).expanduser())
    return out


def load_cifar10(
    n: int | None = 1000,
    *,
    classes: Sequence[int] | None = (0, 1),
    with_test: bool = True,
    data_dir: str | os.PathLike | None = None,
    offline_dir: str | os.PathLike | None = None,
    allow_jpeg: bool = False,
    download: bool = True,
    download_root: str | os.PathLike | None = None,
) -> Dataset:
    """The first n CIFAR-10 training images of ``classes`` (None: all ten) in original order, pixels/255.

    Labels are renumbered 0..K−1 in the order of ``classes`` (classes 0/1 keep their labels).

    >>> ds = load_cifar10(4, with_test=False)             # doctest: +SKIP
    >>> ds.inputs.shape, ds.num_classes                     # doctest: +SKIP
    (torch.Size([4, 3, 32, 32]), 2)
    """
    classes = _check_classes(classes)
    looked: list[str] = []
    for root in (data_dir, os.environ.get("STABCHECK_DATA_DIR")):
        if not root:
            continue
        folder = Path(root).expanduser() / "cifar-10-batches-py"
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return _cifar_torchvision(folder, classes, n, with_test)
        looked.append(f"torchvision root: {folder} (no data_batch_1..5, test_batch)")
    for folder in _offline_candidates(offline_dir):
        if (folder / "cifar10_all_subset.npz").is_file():
            try:
                return _cifar_offline(folder, classes, n, with_test, allow_jpeg)
            except DataRequestError:
                raise
            except ValueError as err:  # numpy's refusal of an object array (allow_pickle=False)
                raise DataRequestError(f"the npz files in {folder} hold Python objects ({err}); stabcheck reads "
                                       "them as plain arrays only: replace them by the original files") from None
        looked.append(f"offline npz: {folder} (no cifar10_all_subset.npz)")
    if download:
        root = Path(download_root or DOWNLOAD_ROOT)
        try:
            import torchvision

            torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # any network or checksum failure: report it with the others
            looked.append(f"torchvision download into {root}: failed ({type(exc).__name__}: {exc})")
        else:
            return _cifar_torchvision(root / "cifar-10-batches-py", classes, n, with_test)
    else:
        looked.append("torchvision download: not attempted (download=False)")
    raise DataNotFoundError(
        "CIFAR-10 not found. Looked in:\n  - " + "\n  - ".join(looked) + "\nTo get it: " + HOW_TO_GET["cifar10"]
    )
