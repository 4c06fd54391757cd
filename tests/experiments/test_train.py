"""Seeded FP32 training and the trained-weights cache."""

from __future__ import annotations

import pytest
import torch

from lowbit.experiments.train import TrainConfig, cache_dir, evaluate, train

pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn (`pip install scikit-learn`)")

from lowbit.experiments.data import load_digits  # noqa: E402

CFG = TrainConfig("digits-cnn", "digits", seed=1, epochs=1, batch_size=64, train_subset=256, threads=1)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("LOWBIT_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "lowbit")


def test_same_seed_same_weights_and_cache_hit(tmp_path):
    data = load_digits()
    first = train(CFG, data, cache=tmp_path)
    assert not first.cached and first.cache_path is not None and first.cache_path.is_file()
    again = train(CFG, data, cache=tmp_path)
    assert again.cached and again.seconds == 0.0
    assert _same(first.model, again.model)
    fresh = train(CFG, data, cache=False)
    assert _same(first.model, fresh.model)  # deterministic, not only cached
    assert not fresh.model.training
    acc = evaluate(first.model, data.test_images, data.test_labels)
    assert 0.0 <= acc <= 1.0


def test_cache_key_changes_with_the_recipe(tmp_path):
    data = load_digits()
    a = train(CFG, data, cache=tmp_path)
    other = TrainConfig("digits-cnn", "digits", seed=2, epochs=1, batch_size=64, train_subset=256)
    b = train(other, data, cache=tmp_path)
    assert a.cache_path != b.cache_path and not b.cached
    assert not _same(a.model, b.model)


def test_corrupt_cache_entry_is_retrained(tmp_path):
    data = load_digits()
    a = train(CFG, data, cache=tmp_path)
    a.cache_path.write_bytes(b"not a checkpoint")
    b = train(CFG, data, cache=tmp_path)
    assert not b.cached and "unreadable" in b.note
    assert _same(a.model, b.model)


def test_unwritable_cache_is_a_note_not_a_failure(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = train(CFG, load_digits(), cache=blocker / "sub")
    assert not result.cached and "LOWBIT_CACHE" in result.note


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig("lenet5", "mnist", epochs=0)
    with pytest.raises(ValueError, match="data set"):
        train(TrainConfig("lenet5", "mnist"), load_digits(), cache=False)


def test_threads_context_sets_and_restores():
    from lowbit.experiments.train import threads

    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads(None):
        assert torch.get_num_threads() == before
