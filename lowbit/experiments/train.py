"""Deterministic FP32 training of the experiment models, with an on-disk cache of trained weights.

Training is seeded (``torch.manual_seed`` for the initialization, a separate ``torch.Generator``
for the batch order), uses Adam with a one-cycle learning-rate schedule, and runs on a fixed
number of CPU threads (default 1: torch's parallel reductions change the last bits of the
weights with the thread count, so a fixed count makes the weights independent of the machine's
cores; on two busy cores one thread is also the faster choice for these small models).

Trained weights are cached under `cache_dir()` — ``$LOWBIT_CACHE`` if set, else
``~/.cache/lowbit`` — keyed by the model, data set, seed, epochs, the other hyper-parameters and a
hash of this code (lowbit's version, torch's version and the source of the data, model and
training modules), so a rerun loads the weights in a second, and any change to the recipe
retrains. A cache that cannot be written is skipped (the run goes on); a corrupt entry is retrained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lowbit.experiments.data import Dataset
from lowbit.experiments.models import build_model

__all__ = ["TrainConfig", "TrainedModel", "cache_dir", "train", "evaluate", "threads"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How one FP32 model is trained. Every field is part of the cache key."""

    model: str
    dataset: str
    seed: int = 0
    epochs: int = 3
    batch_size: int = 128
    max_lr: float = 3e-3  # Adam, one-cycle schedule peaking at max_lr
    weight_decay: float = 0.0
    train_subset: "int | None" = None  # train on the first N examples only (quick runs, tests)
    threads: int = 1  # torch.set_num_threads during training (the weights depend on it)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")


@dataclasses.dataclass
class TrainedModel:
    """A trained model (in eval mode) and how it was obtained."""

    model: nn.Module
    config: TrainConfig
    seconds: float  # training time (0 when loaded from the cache)
    cached: bool  # loaded from the cache
    cache_path: "Path | None"  # where the weights are (or would have been) cached
    note: str = ""  # e.g. why the cache was not used


def cache_dir() -> Path:
    """``$LOWBIT_CACHE`` if set, else ``~/.cache/lowbit`` (read at call time)."""
    env = os.environ.get("LOWBIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lowbit"


@contextlib.contextmanager
def threads(n: "int | None") -> Iterator[None]:
    """Run the block on ``n`` threads (None: leave the settings alone), then restore them.

    Sets torch's intra-op threads and, when numba is installed, the threads of lowbit's numba
    kernels: measured on two cores, after a numba kernel ran on two threads torch's inference
    took twice the CPU time (the two thread pools compete); capped together they do not.
    """
    if n is None:
        yield
        return
    n = max(1, int(n))
    before = torch.get_num_threads()
    numba = importlib.import_module("numba") if importlib.util.find_spec("numba") is not None else None
    numba_before = numba.get_num_threads() if numba is not None else None
    torch.set_num_threads(n)
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if numba is not None:
            numba.set_num_threads(numba_before)


def _code_version() -> str:
    from lowbit import __version__
    from lowbit.experiments import data, models

    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(torch.__version__.split("+")[0].encode())
    for module in (data, models):
        h.update(inspect.getsource(module).encode())
    h.update(inspect.getsource(_fit).encode())
    return h.hexdigest()[:12]


def _cache_path(cfg: TrainConfig, root: Path) -> Path:
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True) + _code_version()
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / "models" / f"{cfg.model}-{cfg.dataset}-seed{cfg.seed}-ep{cfg.epochs}-{digest}.pt"


def _fit(model: nn.Module, data: Dataset, cfg: TrainConfig, progress: Any = None) -> None:
    images, labels = data.train_images, data.train_labels
    if cfg.train_subset is not None:
        images, labels = images[: cfg.train_subset], labels[: cfg.train_subset]
    n = labels.numel()
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    opt = torch.optim.Adam(model.parameters(), lr=cfg.max_lr / 25, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=cfg.epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(cfg.seed)
    task = None
    if progress is not None:
        task = progress.add_task(f"train {cfg.model} on {cfg.dataset}", total=cfg.epochs * steps_per_epoch)
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if task is not None:
                progress.advance(task)
    model.eval()


def train(
    cfg: TrainConfig,
    data: Dataset,
    *,
    cache: "bool | str | os.PathLike[str]" = True,
    progress: Any = None,
) -> TrainedModel:
    """Train ``cfg.model`` on ``data`` in FP32, or load the cached weights of an identical run.

    ``cache``: True (use `cache_dir()`), False (always train, write nothing) or a directory.
    ``progress``: an optional ``rich.progress.Progress`` to show the batches on.
    """
    if data.name != cfg.dataset:
        raise ValueError(f"TrainConfig is for data set {cfg.dataset!r} but got {data.name!r}")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes)
    root = None if cache is False else (cache_dir() if cache is True else Path(cache))
    path = _cache_path(cfg, root) if root is not None else None
    note = ""
    if path is not None and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as err:  # a corrupt or stale entry: retrain and overwrite it
            note = f"cache entry {path} unreadable ({type(err).__name__}); retrained"
        else:
            model.eval()
            return TrainedModel(model, cfg, 0.0, True, path)
    start = time.perf_counter()
    with threads(cfg.threads):
        _fit(model, data, cfg, progress)
    seconds = time.perf_counter() - start
    if path is not None:
        note = _write_cache(model, path) or note
    return TrainedModel(model, cfg, seconds, False, path, note)


def _write_cache(model: nn.Module, path: Path) -> str:
    """Save the weights atomically (temp file + rename); return a note instead of failing."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        os.close(fd)
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        return ""
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return f"weights not cached ({path.parent}: {err.strerror or err}); set LOWBIT_CACHE to a writable directory"


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on the given images.

    Batches of 500 stay in cache on a small CPU; a model and images in ``torch.channels_last``
    run about twice as fast here as contiguous ones (see `weight_formats`).
    """
    model.eval()
    correct = 0
    for i in range(0, labels.numel(), batch_size):
        correct += int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(1, labels.numel())
