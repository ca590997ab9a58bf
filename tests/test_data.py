"""Dataset loaders: real FashionMNIST and CIFAR-10, their order, the source order and the not-found error."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from stabcheck.experiments import cifar, data
from stabcheck.experiments.data import DataNotFoundError, DataRequestError, load_cifar10, load_fashion_mnist, one_hot

FIRST_FASHION_LABELS = [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
FIRST_CIFAR_LABELS = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def _offline_file(name: str):
    for folder in cifar._offline_candidates(None):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"offline npz {name} not found (set STABCHECK_OFFLINE_DATA to ../shared/data)")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("STABCHECK_DATA_DIR", raising=False)
    monkeypatch.delenv("STABCHECK_OFFLINE_DATA", raising=False)


# ---- FashionMNIST -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion(load_data):
    return load_data("fashion_mnist", 1000)


def test_fashion_shapes_range_and_order(fashion):
    assert fashion.inputs.shape == (1000, 1, 28, 28) and fashion.inputs.dtype == torch.float32
    assert fashion.labels.dtype == torch.int64 and fashion.labels[:10].tolist() == FIRST_FASHION_LABELS
    assert float(fashion.inputs.min()) == 0.0 and float(fashion.inputs.max()) == 1.0
    assert fashion.test_inputs.shape == (10_000, 1, 28, 28) and fashion.test_labels.shape == (10_000,)
    assert fashion.num_classes == 10 and fashion.train_index.tolist() == list(range(1000))
    # pixels/255 without normalisation: the training mean of the first 1000 images is near the full set's 0.286
    assert 0.26 < float(fashion.inputs.mean()) < 0.31


def test_fashion_matches_the_exact_offline_subset(fashion):
    subset = np.load(_offline_file("fashion_mnist_subset.npz"))
    pixels = torch.from_numpy(subset["train_images"]).float().div(255).unsqueeze(1)
    assert torch.equal(fashion.inputs[:100], pixels)
    assert fashion.labels.tolist() == subset["train_labels_all"][:1000].tolist()
    assert torch.equal(fashion.test_inputs[:2000], torch.from_numpy(subset["test_images"]).float().div(255).unsqueeze(1))


def test_targets_one_hot_for_mse_labels_for_ce(fashion):
    t = fashion.targets("mse")
    assert t.shape == (1000, 10) and torch.equal(t.argmax(1), fashion.labels) and torch.equal(t.sum(1), torch.ones(1000))
    assert fashion.targets("ce") is fashion.labels
    assert one_hot(torch.tensor([1, 0]), 2).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def _write_idx(path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion_root(root, gz: bool):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28) % 256
    _write_idx(raw / "train-images-idx3-ubyte", images, gz)
    _write_idx(raw / "train-labels-idx1-ubyte", np.array([4, 3, 2, 1, 0]), gz)
    _write_idx(raw / "t10k-images-idx3-ubyte", images[:2], gz)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 8]), gz)
    return images


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_torchvision_root_comes_first(tmp_path, no_env, gz):
    images = _fake_fashion_root(tmp_path, gz)
    ds = load_fashion_mnist(3, data_dir=tmp_path)
    assert ds.source.startswith("torchvision root") and ds.labels.tolist() == [4, 3, 2]
    assert torch.equal(ds.inputs[:, 0], torch.from_numpy(images[:3]).float() / 255)
    assert ds.test_labels.tolist() == [7, 8]
    with pytest.raises(DataRequestError, match="only 5"):
        load_fashion_mnist(6, data_dir=tmp_path)


def test_environment_variable_root(tmp_path, monkeypatch):
    _fake_fashion_root(tmp_path, gz=True)
    monkeypatch.setenv("STABCHECK_DATA_DIR", str(tmp_path))
    assert load_fashion_mnist(2, with_test=False).source.startswith("torchvision root")


def test_fashion_not_found_lists_every_place(tmp_path, no_env):
    empty_root, empty_system = tmp_path / "root", tmp_path / "system"
    with pytest.raises(DataNotFoundError) as err:
        load_fashion_mnist(10, data_dir=empty_root, system_dir=empty_system, download=False)
    msg = str(err.value)
    for place in (empty_root / "FashionMNIST" / "raw", empty_root, empty_system):
        assert str(place) in msg
    assert "download" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_failed_download_is_reported_not_hidden(tmp_path, no_env, monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataNotFoundError, match="failed .*network unreachable"):
        load_fashion_mnist(10, system_dir=tmp_path, download=True, download_root=tmp_path / "dl")


def test_bad_requests(fashion):
    with pytest.raises(DataRequestError, match="positive integer"):
        load_fashion_mnist(0)
    with pytest.raises(DataRequestError, match="only 60000"):
        load_fashion_mnist(60_001)
    with pytest.raises(DataRequestError, match="unknown dataset"):
        data.load_dataset("mnist", 10)


# ---- CIFAR-10 -----------------------------------------------------------------------------------
def test_cifar_two_classes_keep_original_order(load_data):
    full = np.load(_offline_file("cifar10_subset.npz"))
    ds = load_data("cifar10", 500)
    assert ds.inputs.shape == (500, 3, 32, 32) and ds.inputs.dtype == torch.float32 and ds.num_classes == 2
    assert 0.0 <= float(ds.inputs.min()) and float(ds.inputs.max()) <= 1.0
    expected_index = np.flatnonzero(np.isin(full["train_labels_all"], (0, 1)))[:500]
    assert ds.train_index.tolist() == expected_index.tolist()
    assert ds.labels.tolist() == full["train_labels_all"][expected_index].tolist()
    exact = np.load(_offline_file("cifar10_all_subset.npz"))
    first = torch.from_numpy(exact["train_images"][expected_index[0]]).permute(2, 0, 1).float() / 255
    assert torch.equal(ds.inputs[0], first)
    assert ds.test_labels is not None and set(ds.test_labels.tolist()) == {0, 1}


def test_offline_cifar_exact_pixels_only_unless_jpeg_allowed(monkeypatch):
    folder = _offline_file("cifar10_subset.npz").parent
    monkeypatch.delenv("STABCHECK_DATA_DIR", raising=False)  # only the folder given may be used
    monkeypatch.delenv("STABCHECK_OFFLINE_DATA", raising=False)
    exact = load_cifar10(762, offline_dir=folder)
    assert exact.source.endswith("cifar10_all_subset.npz") and exact.notes == [
        "test set: the 192 test images of classes (0, 1) among test images 0..999 (exact pixels; not the full test set)"]
    with pytest.raises(DataRequestError, match="allow_jpeg=True"):
        load_cifar10(763, with_test=False, offline_dir=folder)
    ds = load_cifar10(1000, allow_jpeg=True, offline_dir=folder)
    assert ds.inputs.shape == (1000, 3, 32, 32) and ds.notes[0] == "238 of 1000 training images are JPEG-decoded (allow_jpeg=True)"
    assert torch.equal(ds.inputs[:762], exact.inputs) and bool((ds.train_index[1:] > ds.train_index[:-1]).all())
    assert ds.test_inputs.shape == (2000, 3, 32, 32)


def test_cifar_all_classes(load_data):
    _offline_file("cifar10_all_subset.npz")
    ds = load_data("cifar10_all", 100)
    assert ds.num_classes == 10 and ds.labels[:10].tolist() == FIRST_CIFAR_LABELS
    assert ds.train_index.tolist() == list(range(100))


def test_cifar_torchvision_root_and_class_renumbering(tmp_path, no_env):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels_all = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=6).tolist()
        labels_all += labels if name != "test_batch" else []
        images = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": images, "labels": labels}, fh)
    ds = load_cifar10(3, classes=(7, 2), data_dir=tmp_path)
    keep = [i for i, y in enumerate(labels_all) if y in (7, 2)][:3]
    assert ds.source.startswith("torchvision root") and ds.train_index.tolist() == keep
    assert ds.labels.tolist() == [0 if labels_all[i] == 7 else 1 for i in keep]
    with pytest.raises(DataRequestError, match="distinct CIFAR-10 labels"):
        load_cifar10(3, classes=(1, 1), data_dir=tmp_path)


def test_cifar_not_found_lists_every_place(tmp_path, no_env):
    with pytest.raises(DataNotFoundError) as err:
        load_cifar10(10, data_dir=tmp_path / "root", offline_dir=tmp_path / "offline", download=False)
    msg = str(err.value)
    for place in (tmp_path / "root" / "cifar-10-batches-py", tmp_path / "offline"):
        assert str(place) in msg
    assert "STABCHECK_OFFLINE_DATA" in msg and "download" in msg
