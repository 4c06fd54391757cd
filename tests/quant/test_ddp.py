"""Simulated training under DistributedDataParallel (2 gloo processes) matches one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch

from lowbit.testing import ddp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_training_matches_the_single_process_emulation_bit_for_bit(tmp_path):
    out = tmp_path / "params.pt"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "lowbit.testing.ddp", str(out)],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    got = torch.load(out)
    want = ddp.reference_parameters(world=2)
    start = [p.detach() for p in ddp.build_model().parameters()]
    assert len(got) == len(want)
    for g, w, s in zip(got, want, start):
        assert torch.equal(g, w)
        assert not torch.equal(g, s)  # training moved the weights
