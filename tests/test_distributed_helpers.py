"""pyro_ssvi.distributed in one process: no-ops without a group, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from pyro_ssvi import distributed


def test_helpers_are_identities_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    x = torch.arange(6.0).reshape(3, 2)
    assert distributed.init_from_env("cpu") is None
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.is_main_process()
    assert distributed.shard(x) is x and distributed.gather_rows(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert torch.equal(distributed.all_reduce_mean_(x.clone()), x)
    distributed.shutdown()  # nothing to leave
    assert not dist.is_initialized()


def test_incomplete_torchrun_environment_names_the_missing_variable(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK is not set; launch with torchrun"):
        distributed.init_from_env("cpu")


def test_shutdown_destroys_the_process_group(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert dist.is_initialized() and not distributed.is_distributed()
        distributed.shutdown()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_process_group_leaves_only_a_group_it_joined(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group("cpu") as info:
        assert info is None and not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with distributed.process_group("cpu"):
            pass
        assert dist.is_initialized()  # the caller's group stays
    finally:
        dist.destroy_process_group()
