"""The datasets of the paper's experiments (PAPER.md §3), from local files first.

FashionMNIST: the first n training images in original order and the test set, pixels/255.
Sources, in order: a torchvision root (``data_dir`` or env ``STABCHECK_DATA_DIR``), Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), torchvision's download.

CIFAR-10: :mod:`~.cifar` (the first n training images of the chosen classes).

When no source has the data, :class:`DataNotFoundError` lists every place looked at and how to
get the data; no loader ever falls back to other data.

>>> ds = load_fashion_mnist(5, with_test=False)          # doctest: +SKIP
>>> ds.inputs.shape, ds.labels.tolist()                    # doctest: +SKIP
(torch.Size([5, 1, 28, 28]), [9, 0, 0, 3, 0])
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .cifar import load_cifar10
from .dataset import (DOWNLOAD_ROOT, HOW_TO_GET, DataNotFoundError, DataRequestError, Dataset, check_n,
                      images_to_tensor, one_hot)

__all__ = ["DataNotFoundError", "DataRequestError", "Dataset", "load_cifar10", "load_dataset", "load_fashion_mnist",
           "one_hot", "read_idx"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_TRAIN_SIZE = 60_000


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
    n = check_n(n, FASHION_TRAIN_SIZE, "FashionMNIST training images")
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
    check_n(n, min(len(images), len(labels)), f"FashionMNIST training images in {files['train_images'].parent}")
    test_x = test_y = None
    if with_test:
        test_x = images_to_tensor(read_idx(files["test_images"]))
        test_y = torch.from_numpy(read_idx(files["test_labels"]).astype(np.int64))
    return Dataset(
        name="fashion_mnist", inputs=images_to_tensor(images), labels=torch.from_numpy(labels.astype(np.int64)),
        test_inputs=test_x, test_labels=test_y, num_classes=10, classes=tuple(range(10)), source=source,
        train_index=torch.arange(n),
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
