"""What every data loader returns (:class:`Dataset`) and raises, and the helpers they share."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: Where torchvision's download goes when no ``download_root`` is given.
DOWNLOAD_ROOT = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "stabcheck" / "data"

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


def images_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 N×H×W or N×H×W×C → float32 N×C×H×W in [0, 1] (pixels/255, no normalisation)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def check_n(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:  # True is not a sample count
        raise DataRequestError(f"n must be a positive integer, got {n!r}")
    if n > available:
        raise DataRequestError(f"asked for the first {n} {what}, but the source has only {available}")
    return int(n)
