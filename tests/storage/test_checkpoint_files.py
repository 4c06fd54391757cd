"""Checkpoints as files: names, paths, permissions, failures, temporaries, tied tensors, header rule.

Nothing is lost (a refused save never touches the destination), nothing is half-written, and
every failure is a clear error naming what is wrong.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import lowbit as lb
from lowbit.storage import inspect_checkpoint


def good_file(path: Path) -> bytes:
    lb.save({"w": torch.linspace(-1, 1, 12), "steps": torch.tensor(3)}, path, formats="posit8_es2")
    return path.read_bytes()


def header_doc(path: Path) -> "dict[str, Any]":
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["lowbit"])


class TestNames:
    def test_reserved_metadata_name_is_refused_and_the_old_file_is_intact(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        before = good_file(path)
        model = torch.nn.Linear(3, 2)
        model.register_buffer("__metadata__", torch.ones(2))  # reachable through register_buffer
        with pytest.raises(ValueError, match="'__metadata__' is reserved"):
            lb.save(model, path, formats="int4")
        with pytest.raises(ValueError, match="'__metadata__' is reserved"):
            lb.save({"__metadata__": torch.ones(2)}, path)
        assert path.read_bytes() == before
        assert list(lb.load(path)) == ["w", "steps"]
        assert os.listdir(tmp_path) == ["m.safetensors"]

    @pytest.mark.parametrize("spec", [None, "int4"])
    def test_any_other_name_round_trips_in_order(self, tmp_path: Path, spec: "str | None") -> None:
        names = ["layers.0.attn[0].weight", "ünïcode.名前", "with space", "[bold]markup[/bold]", "\x1b[31mred",
                 "a/b\\c", "", "tab\tand\nnewline", "__meta__", "x" * 2000, "__metadata", "🙂", "a:b"]
        sd = {n: torch.randn(3, 2) + i for i, n in enumerate(names)}
        path = tmp_path / "m.safetensors"
        lb.save(sd, path, formats=spec)
        out = lb.load(path)
        assert list(out) == names
        for n in names:
            expected = sd[n] if spec is None else lb.parse_format(spec).quantize(sd[n])
            assert torch.equal(out[n], expected), n
        assert [r["name"] for r in inspect_checkpoint(path)] == names

    def test_name_that_is_not_unicode_text_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        before = good_file(path)
        with pytest.raises(ValueError, match="not valid Unicode text"):
            lb.save({"\ud800": torch.ones(2)}, path, formats="int4")
        assert path.read_bytes() == before

    def test_non_str_key_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="keys must be str"):
            lb.save({3: torch.ones(2)}, tmp_path / "m.safetensors")
        assert not os.listdir(tmp_path)


class TestTensorsWithoutData:
    @pytest.mark.parametrize("spec", [None, "int4"])
    def test_meta_tensor(self, tmp_path: Path, spec: "str | None") -> None:
        with pytest.raises(ValueError, match="'w' is on the meta device"):
            lb.save({"w": torch.ones(3, device="meta")}, tmp_path / "m.safetensors", formats=spec)
        assert not os.listdir(tmp_path)

    @pytest.mark.parametrize("spec", [None, "int4"])
    @pytest.mark.parametrize("to_sparse", [torch.Tensor.to_sparse, torch.Tensor.to_sparse_csr])
    @pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
    def test_sparse_tensor(self, tmp_path: Path, spec: "str | None", to_sparse: Any) -> None:
        with pytest.raises(ValueError, match=r"'w' has layout torch\.sparse_\w+; only dense .* \.to_dense\(\)"):
            lb.save({"w": to_sparse(torch.eye(3))}, tmp_path / "m.safetensors", formats=spec)
        assert not os.listdir(tmp_path)


class TestPaths:
    def test_bytes_and_pathlike_paths(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        lb.save({"w": torch.ones(3)}, os.fsencode(path), formats="e4m3fn")
        assert torch.equal(lb.load(os.fsencode(path))["w"], torch.ones(3))
        assert torch.equal(lb.load(path)["w"], torch.ones(3))
        assert inspect_checkpoint(os.fsencode(path))[0]["name"] == "w"

    @pytest.mark.parametrize("bad", [3, None, ["m.safetensors"]])
    def test_other_path_types_are_refused(self, tmp_path: Path, bad: Any) -> None:
        with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
            lb.save({"w": torch.ones(3)}, bad)
        with pytest.raises(TypeError, match="path must be a str, bytes or os.PathLike"):
            lb.load(bad)

    def test_fifo_is_refused_without_blocking(self, tmp_path: Path) -> None:
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        result: "list[BaseException]" = []

        def target() -> None:
            try:
                lb.load(fifo)
            except BaseException as err:  # noqa: BLE001 - handed to the test thread
                result.append(err)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(10)
        if thread.is_alive():  # unblock the reader so the test process can end
            with open(fifo, "wb"):
                pass
            thread.join(10)
            pytest.fail("lb.load blocked on a FIFO")
        assert len(result) == 1 and isinstance(result[0], lb.CheckpointError)
        assert "not a regular file" in str(result[0])

    def test_directory_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(lb.CheckpointError, match="not a regular file"):
            lb.load(tmp_path)


def write_raw_header(path: Path, header: "dict[str, Any] | str") -> None:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


class TestDeepHeaders:
    def test_deeply_nested_safetensors_header(self, tmp_path: Path) -> None:
        path = tmp_path / "deep.safetensors"
        write_raw_header(path, '{"x": ' + "[" * 200_000 + "]" * 200_000 + "}")
        with pytest.raises(lb.CheckpointError, match="nested too deeply"):
            lb.load(path)
        with pytest.raises(lb.CheckpointError, match="nested too deeply"):
            inspect_checkpoint(path)

    def test_deeply_nested_lowbit_header_with_a_valid_checksum(self, tmp_path: Path) -> None:
        path = tmp_path / "deep.safetensors"
        text = '{"tensors": ' + "[" * 200_000 + "]" * 200_000 + "}"
        meta = {"format": "pt", "lowbit": text, "lowbit_sha256": hashlib.sha256(text.encode()).hexdigest()}
        write_raw_header(path, {"__metadata__": meta})
        with pytest.raises(lb.CheckpointError, match="lowbit header is nested too deeply"):
            lb.load(path)


class TestWriteFailures:
    """An I/O failure is an OSError naming the path; the old file stays; no temporary is left."""

    def test_disk_full_midway(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "m.safetensors"
        before = good_file(path)
        real_write = os.write
        calls = []

        def write(fd: int, data: Any) -> int:
            calls.append(1)
            if len(calls) == 1:
                return real_write(fd, bytes(data[: len(data) // 2]))  # a short write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", write)
        with pytest.raises(OSError, match=f"cannot save {path}: No space left on device") as info:
            lb.save({"w": torch.randn(1000)}, path, formats="int8")
        monkeypatch.undo()
        assert info.value.errno == errno.ENOSPC
        assert path.read_bytes() == before
        assert os.listdir(tmp_path) == ["m.safetensors"]

    def test_directory_that_refuses_new_files(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "m.safetensors"
        before = good_file(path)
        real_open = os.open

        def deny(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
            return real_open(name, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
        with pytest.raises(PermissionError, match=f"cannot save {path}: cannot create a file in {tmp_path}"):
            lb.save({"w": torch.ones(3)}, path)
        monkeypatch.undo()
        assert path.read_bytes() == before

    @pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
    def test_unwritable_directory(self, tmp_path: Path) -> None:
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match=f"cannot save {directory / 'm.safetensors'}"):
                lb.save({"w": torch.ones(3)}, directory / "m.safetensors")
        finally:
            directory.chmod(0o700)


class TestPermissionsAndTemporaries:
    @pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
    def test_new_checkpoint_follows_the_umask(self, tmp_path: Path, umask: int, mode: int) -> None:
        old = os.umask(umask)
        try:
            lb.save({"w": torch.ones(3)}, tmp_path / "m.safetensors")
        finally:
            os.umask(old)
        assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == mode

    def test_stale_temporaries_of_the_same_target_are_removed(self, tmp_path: Path) -> None:
        from lowbit.storage.checkpoint import _temp_name

        path = tmp_path / "m.safetensors"
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        dead_pid = int(dead.stdout)
        stale = Path(_temp_name(str(path), dead_pid))
        live = Path(_temp_name(str(path), os.getppid()))
        other_target = Path(_temp_name(str(tmp_path / "other.safetensors"), dead_pid))
        foreign = tmp_path / f".m.safetensors.{dead_pid}.tmp"
        for f in (stale, live, other_target, foreign):
            f.write_bytes(b"\0" * 4096)
        lb.save({"w": torch.ones(3)}, path)
        assert not stale.exists()
        assert live.exists() and other_target.exists() and foreign.exists()

    def test_kill_9_during_save_leaves_a_temporary_the_next_save_removes(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        before = good_file(path)
        script = (
            "import os, signal, torch, lowbit as lb\n"
            "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"lb.save({{'w': torch.randn(300_000)}}, {str(path)!r})\n"
        )
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=os.getcwd())
        assert proc.returncode == -9, proc.stderr
        left = sorted(set(os.listdir(tmp_path)) - {"m.safetensors"})
        assert len(left) == 1 and left[0].endswith(".lowbit-tmp")
        assert os.path.getsize(tmp_path / left[0]) > 1_000_000  # the orphan: a whole checkpoint's bytes
        assert path.read_bytes() == before
        lb.save({"w": torch.ones(3)}, path)
        assert os.listdir(tmp_path) == ["m.safetensors"]


class Tied(torch.nn.Module):
    """A tiny language-model shape: the output layer reads the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids))


class TestTiedTensors:
    def make(self) -> Tied:
        torch.manual_seed(0)
        return Tied()

    def check_stored_once(self, path: Path, weight: torch.Tensor, spec: str) -> None:
        with safe_open(str(path), framework="pt") as f:
            assert list(f.keys()) == ["emb.weight"]
        doc = header_doc(path)
        assert doc["container_version"] == 2
        assert doc["tensors"][1] == {"name": "head.weight", "alias_of": "emb.weight"}
        out = lb.load(path)
        assert list(out) == ["emb.weight", "head.weight"]
        expected = lb.parse_format(spec).quantize(weight.detach())
        assert torch.equal(out["emb.weight"], expected) and torch.equal(out["head.weight"], expected)
        assert out["head.weight"] is out["emb.weight"]  # one tensor, as torch.load gives tied weights
        rows = inspect_checkpoint(path)
        assert rows[1]["alias_of"] == "emb.weight" and rows[1]["stored_bytes"] == 0
        assert sum(r["stored_bytes"] for r in rows) == weight.numel()  # 8 bits each, once

    def test_quantized_model_stores_the_tied_weight_once(self, tmp_path: Path) -> None:
        model = lb.quantize_(self.make(), {"weight": "posit8_es2"})
        path = tmp_path / "m.safetensors"
        lb.save(model, path)
        self.check_stored_once(path, model.emb.weight, "posit8_es2")
        fresh = Tied()
        fresh.load_state_dict(lb.load(path))
        assert fresh.head.weight is fresh.emb.weight
        assert torch.equal(fresh.emb.weight.detach(), lb.parse_format("posit8_es2").quantize(model.emb.weight.detach()))

    def test_plain_state_dict_stores_the_tied_weight_once(self, tmp_path: Path) -> None:
        model = self.make()
        path = tmp_path / "m.safetensors"
        lb.save(model.state_dict(), path, formats="e4m3fn")
        self.check_stored_once(path, model.emb.weight, "e4m3fn")
        plain = tmp_path / "plain.safetensors"
        lb.save(model.state_dict(), plain)
        assert header_doc(plain)["tensors"][1] == {"name": "head.weight", "alias_of": "emb.weight"}
        assert os.path.getsize(plain) < 50 * 16 * 4 + 1024

    @pytest.mark.parametrize(
        "formats, detail",
        [({"emb.weight": "int4", "head.weight": "posit8_es2"}, "int4 vs posit8_es2"),
         ({"emb.weight": "int4"}, r"int4 vs as is \(float32\)")],
    )
    def test_different_formats_for_one_tied_parameter_are_refused(self, tmp_path: Path, formats: Any,
                                                                  detail: str) -> None:
        path = tmp_path / "m.safetensors"
        before = good_file(path)
        with pytest.raises(ValueError, match=f"'emb.weight' and 'head.weight' are one tied parameter .*{detail}"):
            lb.save(self.make().state_dict(), path, formats=formats)
        assert path.read_bytes() == before

    def test_different_formats_per_layer_of_a_quantized_tied_model_are_refused(self, tmp_path: Path) -> None:
        model = lb.quantize_(self.make(), {"weight": "posit8_es2", "layers": {"head": {"weight": "int8"}}})
        with pytest.raises(ValueError, match="'emb.weight' and 'head.weight' are one tied parameter"):
            lb.save(model, tmp_path / "m.safetensors")
        assert not os.listdir(tmp_path)

    def test_equal_but_separate_tensors_are_stored_twice(self, tmp_path: Path) -> None:
        w = torch.randn(4, 4)
        path = tmp_path / "m.safetensors"
        lb.save({"a": w, "b": w.clone(), "c": w[1:]}, path, formats="int8")
        assert header_doc(path)["container_version"] == 1  # no alias: readable by version-1 readers
        with safe_open(str(path), framework="pt") as f:
            assert sorted(f.keys()) == ["a", "b", "c"]

    def test_alias_entries_are_checked(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        lb.save(self.make().state_dict(), path, formats="int4")
        for alias, match in [({"name": "head.weight", "alias_of": "nope"}, "'alias_of' must name an earlier"),
                             ({"name": "head.weight", "alias_of": "emb.weight", "x": 1}, "unknown field"),
                             ({"name": "emb.weight", "alias_of": "emb.weight"}, "listed twice")]:
            rewrite_entry(path, 1, alias)
            with pytest.raises(lb.CheckpointError, match=match):
                lb.load(path)


def rewrite_entry(path: Path, index: int, entry: "dict[str, Any]") -> None:
    """Replace entry ``index`` of the lowbit header (checksum recomputed: a well-formed file)."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    doc = json.loads(meta["lowbit"])
    doc["tensors"][index] = entry
    meta["lowbit"] = json.dumps(doc)
    meta["lowbit_sha256"] = hashlib.sha256(meta["lowbit"].encode()).hexdigest()
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
