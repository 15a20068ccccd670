"""Atomic writes and safe checkpoint loading."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from pyro_ssvi.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    write_json,
)


def test_roundtrip_keeps_tensors_and_plain_values(tmp_path):
    state = {"epoch": 3, "guide": {"w": torch.arange(5.0)}, "rng": (1, [2, 3], None)}
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["rng"] == (1, [2, 3], None)
    assert torch.equal(loaded["guide"]["w"], torch.arange(5.0))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})

    def explode(fh):
        fh.write(b"partial")
        raise KeyboardInterrupt  # e.g. the user hits Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, explode)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["metrics.json"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_code_executing_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_ssvi.checkpoint", "version": 1, "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_foreign_and_future_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"epoch": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a pyro_ssvi checkpoint"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format": "pyro_ssvi.checkpoint", "version": 99}, future)
    with pytest.raises(CheckpointError, match="layout version 99"):
        load_checkpoint(future)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
