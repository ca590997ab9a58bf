"""The datasets of the paper's experiments (PAPER.md §3), from local files first.

FashionMNIST: the first n training images in original order and the test set, pixels/255.
Sources, in order: a torchvision root (``data_dir`` or env ``STABCHECK_DATA_DIR``), Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), torchvision's download.

CIFAR-10: the first n training images of the chosen classes (default 0/1, K = 2) in original
order, or of all classes. Sources, in order: a torchvision root, a folder of the offline npz subsets
(``offline_dir`` or env ``STABCHECK_OFFLINE_DATA``; exact pixels only unless ``allow_jpeg``),
torchvision's download (into ``download_root``, default ``~/.cache/stabcheck/data``).

When no source has the data, :class:`DataNotFoundError` lists every place looked at and how to
get the data; no loader ever falls back to other data.

>>> ds = load_fashion_mnist(5, with_test=False)          # doctest: +SKIP
>>> ds.inputs.shape, ds.labels.tolist()                    # doctest: +SKIP
(torch.Size([5, 1, 28, 28]), [9, 0, 0, 3, 0])
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: Where torchvision's download goes when no ``download_root`` is given.
DOWNLOAD_ROOT = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "stabcheck" / "data"

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_TRAIN_SIZE = 60_000
CIFAR_TRAIN_SIZE = 50_000

HOW_TO_GET = {
    "fashion_mnist": (
        "install Debian's package (sudo apt-get install dataset-fashion-mnist), or pass --data-dir / set "
        "STABCHECK_DATA_DIR to a torchvision root holding FashionMNIST/raw/*-idx*-ubyte[.gz], or allow "
        "download=True on a machine with internet access"
    ),
    "cifar10": (
        "pass --data-dir / set STABCHECK_DATA_DIR to a torchvision root holding cifar-10-batches-py/, or set "
        "STABCHECK_OFFLINE_DATA to the folder with cifar10_all_subset.npz and cifar10_subset.npz "
        "(../shared/data), or allow download=True on a machine with internet access"
    ),
}


class DataNotFoundError(FileNotFoundError):
    """No source holds the requested data; the message lists every place looked at."""


class DataRequestError(ValueError):
    """A request the data cannot satisfy (too many samples, unknown classes)."""


@dataclass
class Dataset:
    """Images in [0, 1] (float32, N×C×H×W), integer labels 0..K−1, and where they came from.

    ``targets(loss)`` gives what :class:`~stabcheck.curvature.problem.Problem` expects: one-hot rows for
    ``mse``/``half_sq``, the labels for ``ce``.
    """

    name: str
    inputs: Tensor
    labels: Tensor
    test_inputs: Tensor | None
    test_labels: Tensor | None
    num_classes: int
    classes: tuple[int, ...]
    source: str
    notes: list[str] = field(default_factory=list)
    train_index: Tensor | None = None

    @property
    def n(self) -> int:
        return self.inputs.shape[0]

    def targets(self, loss: str = "mse") -> Tensor:
        return self.labels if loss == "ce" else one_hot(self.labels, self.num_classes)

    def test_targets(self, loss: str = "mse") -> Tensor:
        if self.test_labels is None:
            raise DataRequestError(f"{self.name} was loaded without its test set (with_test=False)")
        return self.test_labels if loss == "ce" else one_hot(self.test_labels, self.num_classes)

    def describe(self) -> dict:
        """JSON-ready summary for reports."""
        return {
            "name": self.name, "n": self.n, "num_classes": self.num_classes, "classes": list(self.classes),
            "n_test": None if self.test_labels is None else int(self.test_labels.shape[0]),
            "source": self.source, "notes": list(self.notes),
        }


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """e_{y_i} rows, float32: the targets of the paper's MSELoss.

    >>> one_hot(torch.tensor([2, 0]), 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(torch.float32)


def _images_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 N×H×W or N×H×W×C → float32 N×C×H×W in [0, 1] (pixels/255, no normalisation)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _check_n(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:  # True is not a sample count
        raise DataRequestError(f"n must be a positive integer, got {n!r}")
    if n > available:
        raise DataRequestError(f"asked for the first {n} {what}, but the source has only {available}")
    return int(n)


# ---- FashionMNIST --------------------------------------------------------------------------------
def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """An idx file (plain or .gz) as a uint8 array; ``limit`` reads only the first items."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        header = fh.read(4)
        if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] != 0x08:
            raise DataRequestError(f"{path} is not an unsigned-byte idx file (header {header!r})")
        ndim = header[3]
        shape = [int.from_bytes(fh.read(4), "big") for _ in range(ndim)]
        count = shape[0] if limit is None else min(limit, shape[0])
        size = count * int(np.prod(shape[1:], dtype=np.int64))
        data = np.frombuffer(fh.read(size), dtype=np.uint8).copy()
    if data.size != size:
        raise DataRequestError(f"{path} is truncated: expected {size} bytes of data, got {data.size}")
    return data.reshape([count, *shape[1:]])


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_files(folder: Path) -> dict[str, Path] | None:
    found = {key: _find_idx(folder, stem) for key, stem in FASHION_FILES.items()}
    return found if all(found.values()) else None


def _fashion_candidates(data_dir, system_dir) -> list[tuple[str, Path]]:
    roots = []
    for root in (data_dir, os.environ.get("STABCHECK_DATA_DIR")):
        if root:
            root = Path(root).expanduser()
            roots += [("torchvision root", root / "FashionMNIST" / "raw"), ("torchvision root", root)]
    roots.append(("Debian dataset-fashion-mnist", Path(system_dir)))
    seen, unique = set(), []
    for label, p in roots:
        if p not in seen:
            seen.add(p)
            unique.append((label, p))
    return unique


def load_fashion_mnist(
    n: int | None = 1000,
    *,
    with_test: bool = True,
    data_dir: str | os.PathLike | None = None,
    system_dir: str | os.PathLike = DEBIAN_FASHION_MNIST,
    download: bool = True,
    download_root: str | os.PathLike | None = None,
) -> Dataset:
    """The first n FashionMNIST training images (original order, pixels/255) and the 10 000 test images.

    When no local source has the data, ``download`` (default True) lets torchvision fetch it into
    ``download_root`` (default ``.cache/data``); a failed download is listed in the error.

    >>> ds = load_fashion_mnist(10, with_test=False)     # doctest: +SKIP
    >>> ds.labels.tolist()                                 # doctest: +SKIP
    [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    """
    n = _check_n(n, FASHION_TRAIN_SIZE, "FashionMNIST training images")
    looked: list[str] = []
    for label, folder in _fashion_candidates(data_dir, system_dir):
        files = _fashion_files(folder)
        if files is None:
            looked.append(f"{label}: {folder} (no {', '.join(FASHION_FILES.values())} [.gz])")
            continue
        return _fashion_from_files(files, n, with_test, f"{label}: {folder}")
    if download:
        root = Path(download_root or DOWNLOAD_ROOT)
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        except Exception as exc:  # any network or checksum failure: report it with the others
            looked.append(f"torchvision download into {root}: failed ({type(exc).__name__}: {exc})")
        else:
            files = _fashion_files(root / "FashionMNIST" / "raw")
            if files is not None:
                return _fashion_from_files(files, n, with_test, f"torchvision download: {root}")
            looked.append(f"torchvision download into {root}: finished but the raw files are missing")
    else:
        looked.append("torchvision download: not attempted (download=False)")
    raise DataNotFoundError(
        "FashionMNIST not found. Looked in:\n  - " + "\n  - ".join(looked) + "\nTo get it: " + HOW_TO_GET["fashion_mnist"]
    )


def _fashion_from_files(files: dict[str, Path], n: int, with_test: bool, source: str) -> Dataset:
    images = read_idx(files["train_images"], limit=n)
    labels = read_idx(files["train_labels"], limit=n)
    _check_n(n, min(len(images), len(labels)), f"FashionMNIST training images in {files['train_images'].parent}")
    test_x = test_y = None
    if with_test:
        test_x = _images_to_tensor(read_idx(files["test_images"]))
        test_y = torch.from_numpy(read_idx(files["test_labels"]).astype(np.int64))
    return Dataset(
        name="fashion_mnist", inputs=_images_to_tensor(images), labels=torch.from_numpy(labels.astype(np.int64)),
        test_inputs=test_x, test_labels=test_y, num_classes=10, classes=tuple(range(10)), source=source,
        train_index=torch.arange(n),
    )


# ---- CIFAR-10 ------------------------------------------------------------------------------------
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
    rows = rows[:_check_n(n, len(rows), what)]
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
        name="cifar10", inputs=_images_to_tensor(x[rows]), labels=torch.from_numpy(labels), test_inputs=None,
        test_labels=None, num_classes=len(classes), classes=classes, source=f"torchvision root: {folder}",
        train_index=torch.from_numpy(rows.astype(np.int64)),
    )
    if with_test:
        x, y = read_cifar_batch(folder / "test_batch")
        rows, labels = _select(y, classes, None, "CIFAR-10 test images")
        ds.test_inputs, ds.test_labels = _images_to_tensor(x[rows]), torch.from_numpy(labels)
    return ds


def _cifar_offline(folder: Path, classes, n, with_test, allow_jpeg) -> Dataset:
    """From cifar10_all_subset.npz (exact; train 0..3999, test 0..999), and with ``allow_jpeg`` from
    cifar10_subset.npz (classes 0/1 only, partly JPEG-decoded, counted in the notes)."""
    what = f"CIFAR-10 training images of classes {classes}"
    exact = np.load(folder / "cifar10_all_subset.npz", allow_pickle=False)
    rows, labels = _select(exact["train_labels"], classes, None, what)
    need = len(rows) if n is None else _check_n(n, CIFAR_TRAIN_SIZE, what)
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
        name="cifar10", inputs=_images_to_tensor(train["train_images"][rows]), labels=torch.from_numpy(labels),
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
        ds.test_inputs, ds.test_labels = _images_to_tensor(test["test_images"][rows]), torch.from_numpy(labels)
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


def load_dataset(name: str, n: int | None, **kwargs) -> Dataset:
    """Dispatch by name: ``fashion_mnist``, ``cifar10`` (classes 0/1) or ``cifar10_all`` (all classes)."""
    if name == "fashion_mnist":
        return load_fashion_mnist(n, **kwargs)
    if name == "cifar10":
        return load_cifar10(n, **kwargs)
    if name == "cifar10_all":
        return load_cifar10(n, classes=None, **kwargs)
    raise DataRequestError(f"unknown dataset {name!r}; choose fashion_mnist, cifar10 or cifar10_all")
