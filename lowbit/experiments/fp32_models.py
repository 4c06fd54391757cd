"""The FP32 models the post-training experiments start from, shared with the flagship's cache.

`hybrid` and `mixed-precision` quantize the same LeNet-5 (MNIST) and CNN (Fashion-MNIST) that
`weight-formats` trains: `trained_model` uses the flagship's recipe (`weight_formats.MODELS`,
``EPOCHS``, batch size, learning rate, training threads), so the weights come from the same cache
entry and a run after the flagship trains nothing. `load_datasets` loads the data sets a config
names, falling back to scikit-learn's digits when none is installed.
"""

from __future__ import annotations

from typing import Any

from lowbit.errors import DataUnavailableError
from lowbit.experiments.data import Dataset, load_dataset
from lowbit.experiments.train import TrainConfig, TrainedModel, train
from lowbit.experiments.weight_formats import EPOCHS, FP32_TARGET, MODELS

__all__ = ["TRAIN_RECIPE", "load_datasets", "trained_model", "train_config"]

#: the flagship's training hyper-parameters (part of the cache key: keep them equal to its config)
TRAIN_RECIPE = {"batch_size": 128, "max_lr": 3e-3, "train_threads": 1}


def load_datasets(names: "list[str]", fallback: "str | None", ctx: Any, experiment: str) -> "list[Dataset]":
    """The data sets ``names`` that are installed (a note for each missing one); ``fallback`` if none is.

    Raises DataUnavailableError, with every install command, when nothing can be loaded.
    """
    loaded, reasons = [], []
    for name in names:
        try:
            loaded.append(load_dataset(name))
        except DataUnavailableError as err:
            reasons.append(str(err))
            ctx.note(f"{name} skipped: {err}")
    if not loaded and fallback:
        try:
            loaded.append(load_dataset(fallback))
        except DataUnavailableError as err:
            reasons.append(str(err))
        else:
            ctx.note(f"none of {', '.join(names)} is installed: ran on {fallback} instead")
    if not loaded:
        raise DataUnavailableError(f"no data set available for {experiment}:\n  " + "\n  ".join(reasons))
    return loaded


def train_config(data: Dataset, cfg: "dict[str, Any]") -> TrainConfig:
    """The flagship's TrainConfig for ``data`` (``cfg`` may override epochs, train_subset, seed)."""
    name = data.name
    epochs = cfg.get("epochs") or {}
    return TrainConfig(
        model=MODELS[name], dataset=name, seed=int(cfg["seed"]), epochs=int(epochs.get(name, EPOCHS[name])),
        batch_size=int(cfg.get("batch_size", TRAIN_RECIPE["batch_size"])),
        max_lr=float(cfg.get("max_lr", TRAIN_RECIPE["max_lr"])), train_subset=cfg.get("train_subset"),
        threads=int(cfg.get("train_threads", TRAIN_RECIPE["train_threads"])),
    )


def trained_model(data: Dataset, cfg: "dict[str, Any]", ctx: Any) -> TrainedModel:
    """Train (or load from the cache) the FP32 model for ``data``; notes go to ``ctx``."""
    trained = train(train_config(data, cfg), data, cache=cfg.get("cache", True), progress=ctx.progress)
    if trained.note:
        ctx.note(trained.note)
    return trained


def fp32_target(name: str) -> "float | None":
    """The FP32 accuracy the issue asks of the model on data set ``name`` (None: no target)."""
    return FP32_TARGET.get(name)
