"""Cost of op-level simulation on a small transformer (transformers' BertModel, random init).

Times one forward (median of --repeats, no grad, eval) of: the float model; the model under
``quantize_`` with nothing to simulate (only the full-precision op count runs: the
TorchFunctionMode and the module hooks); attention simulated in e4m3fn (q, k, v, probs) under
sdpa and eager; and the same with weights in int8 per channel.

    python benchmarks/bench_ops.py --threads 1 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import lowbit as lb


def _bert(impl: str, layers: int, hidden: int, seq: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                     intermediate_size=4 * hidden, vocab_size=1000, attn_implementation=impl)
    model = BertModel(cfg).eval()
    batch = {"input_ids": torch.randint(0, 1000, (8, seq)), "attention_mask": torch.ones(8, seq, dtype=torch.long)}
    return model, batch


def _time(model, batch, repeats: int) -> float:
    with torch.no_grad():
        model(**batch)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    attn = {"attention": {r: "e4m3fn" for r in ("q", "k", "v", "probs")}}
    w8 = {"weight": {"format": "int8", "scaling": "absmax", "granularity": "channel"}}
    rows = []
    for impl in ("sdpa", "eager"):
        for label, cfg in [("float", None), ("quantize_, nothing simulated", {}), ("attention e4m3fn", attn),
                           ("int8 weights", w8), ("int8 weights + attention e4m3fn", {**w8, **attn})]:
            model, batch = _bert(impl, args.layers, args.hidden, args.seq)
            if cfg is not None:
                lb.quantize_(model, cfg)
            rows.append({"impl": impl, "config": label, "ms": 1e3 * _time(model, batch, args.repeats)})
            print(f"{impl:6s} {label:34s} {rows[-1]['ms']:8.2f} ms")
    print(json.dumps({"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
