"""Op-level simulation under DistributedDataParallel (one gloo process): DDP's forward runs the
wrapped model's hooks, so attention is simulated and gradients flow as without DDP."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import lowbit as lb


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.qkv(x).view(*x.shape[:2], 3, 2, 4).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape))


@pytest.fixture
def gloo():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_wrapped_model_simulates_attention_and_trains_like_the_plain_model(gloo):
    cfg = {"attention": {"probs": "e4m3fn", "q": "posit8_es2"}, "grad": "e5m2"}
    torch.manual_seed(0)
    plain = lb.quantize_(Block(), cfg)
    torch.manual_seed(0)
    wrapped = nn.parallel.DistributedDataParallel(lb.quantize_(Block(), cfg))
    x = torch.randn(2, 5, 8)
    y_plain, y_ddp = plain(x), wrapped(x)
    assert torch.equal(y_plain, y_ddp)
    with torch.no_grad():
        fp32 = lb.dequantize_(Block().requires_grad_(False))
        fp32.load_state_dict(plain.state_dict())
        assert not torch.allclose(fp32(x), y_plain, atol=1e-4)
    y_plain.sum().backward()
    y_ddp.sum().backward()
    for a, b in zip(plain.parameters(), wrapped.module.parameters()):
        assert torch.equal(a.grad, b.grad)
