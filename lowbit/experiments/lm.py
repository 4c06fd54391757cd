"""A small byte-level causal transformer LM, trained here in FP32 on CPython's standard library.

`TinyGPT` is a GPT-2-style decoder (pre-norm blocks, fused QKV projection, GELU MLP, learned
positions) built from ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding`` and
``F.scaled_dot_product_attention(is_causal=True)`` — the ops lowbit simulates. `train_lm` trains
it with AdamW and a cosine schedule on random windows of `lowbit.experiments.text.stdlib_bytes`
(seeded, a fixed thread count) and caches the weights like `lowbit.experiments.train` does;
`bits_per_byte` measures the validation loss (cross-entropy in bits per byte; perplexity per
byte is 2 ** bits_per_byte).

>>> model = TinyGPT(LMConfig(d_model=32, n_heads=2, n_layers=1, context=16))
>>> model(torch.zeros(2, 16, dtype=torch.long)).shape
torch.Size([2, 16, 256])
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.experiments.train import _write_cache, cache_dir, threads

__all__ = ["LMConfig", "TinyGPT", "train_lm", "bits_per_byte", "TrainedLM"]


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Architecture and training recipe of the LM (every field is part of the cache key)."""

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    context: int = 128
    steps: int = 1500
    batch_size: int = 32
    max_lr: float = 3e-3
    weight_decay: float = 0.05
    train_bytes: int = 4_000_000
    seed: int = 0
    threads: int = 2


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    """Byte-level (vocabulary 256) causal transformer; input [batch, time] byte ids, output logits."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model={cfg.d_model} must be a multiple of n_heads={cfg.n_heads}")
        self.cfg = cfg
        self.tok = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@dataclasses.dataclass
class TrainedLM:
    model: TinyGPT
    seconds: float  # training time (0 when loaded from the cache)
    cached: bool
    note: str = ""


def _cache_path(cfg: LMConfig, root: Path) -> Path:
    from lowbit import __version__
    from lowbit.experiments import text

    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    for part in (__version__, torch.__version__.split("+")[0], inspect.getsource(text),
                 inspect.getsource(TinyGPT), inspect.getsource(_Block), inspect.getsource(_fit)):
        h.update(part.encode())
    return root / "models" / f"tinygpt-stdlib-seed{cfg.seed}-steps{cfg.steps}-{h.hexdigest()[:16]}.pt"


def _fit(model: TinyGPT, data: torch.Tensor, cfg: LMConfig, progress: Any = None) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.max_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = data.long()
    task = progress.add_task("train the byte-level LM (FP32)", total=cfg.steps) if progress is not None else None
    model.train()
    for _ in range(cfg.steps):
        start = torch.randint(0, ids.numel() - cfg.context - 1, (cfg.batch_size,), generator=gen)
        window = ids[start[:, None] + torch.arange(cfg.context + 1)]
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if task is not None:
            progress.advance(task)
    model.eval()


def train_lm(cfg: LMConfig, data: torch.Tensor, *, cache: bool = True, progress: Any = None) -> TrainedLM:
    """Train `TinyGPT` on the byte tensor ``data`` (or load the cached weights of an identical run)."""
    torch.manual_seed(cfg.seed)
    model = TinyGPT(cfg)
    path = _cache_path(cfg, cache_dir()) if cache else None
    note = ""
    if path is not None and path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # a corrupt or stale entry: retrain and overwrite it
            note = f"cache entry {path} unreadable ({type(err).__name__}); retrained"
        else:
            return TrainedLM(model.eval(), 0.0, True)
    t0 = time.perf_counter()
    with threads(cfg.threads):
        _fit(model, data, cfg, progress)
    seconds = time.perf_counter() - t0
    if path is not None:
        note = _write_cache(model, path) or note
    return TrainedLM(model, seconds, False, note)


@torch.no_grad()
def bits_per_byte(model: nn.Module, data: torch.Tensor, context: int, batch_size: int = 16) -> float:
    """Mean cross-entropy (bits per byte) of ``model`` predicting every byte of non-overlapping
    windows of ``context + 1`` bytes of ``data`` from the bytes before it in its window."""
    ids = data.long()
    n = (ids.numel() - 1) // context
    windows = torch.stack([ids[i * context: i * context + context + 1] for i in range(n)])
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        w = windows[i: i + batch_size]
        logits = model(w[:, :-1]).float()
        total += float(F.cross_entropy(logits.reshape(-1, 256), w[:, 1:].reshape(-1), reduction="sum"))
        count += w[:, 1:].numel()
    return total / count / math.log(2)
