"""Atomic writes, write errors, held signals and safe checkpoint loading."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from pyro_ssvi.app.checkpoint import (
    CheckpointError,
    WriteError,
    atomic_write,
    check_writable,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    signals_deferred,
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


def _refusal(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    assert "weights_only" not in text  # torch's advice to load it unsafely
    return text


def test_code_executing_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_ssvi.checkpoint", "version": 1, "x": _Evil()}, path)
    text = _refusal(path)
    assert f"({os.system.__module__}.system)" in text and "do not load it" in text
    assert not (tmp_path / "pwned").exists()
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)  # pickled classes are refused too
    assert "(torch.nn.modules.linear.Linear)" in _refusal(module)


def test_corrupt_foreign_and_future_checkpoints(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"epoch": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    assert "truncated or corrupt" in _refusal(truncated)
    assert "restore it from a copy" in _refusal(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert "a torch file but not a pyro_ssvi checkpoint" in _refusal(foreign)
    future = tmp_path / "future.pt"
    torch.save({"format": "pyro_ssvi.checkpoint", "version": 99}, future)
    assert "layout version 99" in _refusal(future)
    assert "does not exist" in _refusal(tmp_path / "missing.pt")
    for name, data in [
        ("plain.pkl", pickle.dumps([1, 2], protocol=2)),
        ("text.pt", b"hello"),
        ("empty.pt", b""),
    ]:
        (tmp_path / name).write_bytes(data)
        assert "not a file written by torch.save" in _refusal(tmp_path / name)


def test_write_errors_name_the_file_and_the_cause(tmp_path):
    target = tmp_path / "missing" / "out.json"
    with pytest.raises(WriteError) as info:
        write_json(target, {"a": 1})
    assert info.value.errno == errno.ENOENT
    assert str(info.value) == (
        f"cannot write {target}: no such file or directory (its directory does "
        "not exist)"
    )
    with pytest.raises(WriteError, match="it is a directory"):
        check_writable(tmp_path)
    with pytest.raises(WriteError, match=f"cannot write {target}"):
        check_writable(target)
    assert check_writable(tmp_path / "new.json") == tmp_path / "new.json"
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


def test_read_only_file_system_is_named_once():
    # What _write_error builds from the OSError of a write on a read-only mount.
    error = WriteError(errno.EROFS, os.strerror(errno.EROFS), "/ro/run/config.json")
    assert str(error) == (
        "cannot write /ro/run/config.json: read-only file system; choose another "
        "location"
    )


def test_checkpoint_bytes_depend_on_the_values_not_on_object_identity(tmp_path):
    """Equal strings that are one object in one state and two in another (a
    fresh run's configuration against one read back from JSON) pickle to the
    same bytes, and so do shared and unshared containers."""
    shared_list = [1, 2]
    fresh = {
        "config": {"drop_schedule": "cosine", "lr_schedule": "cosine"},
        "history": [{"epoch": 1}, {"epoch": 2}],
        "pair": (shared_list, shared_list),
        "w": torch.arange(3.0),
    }
    loaded = json.loads(json.dumps({k: v for k, v in fresh.items() if k != "w"}))
    loaded["pair"] = ([1, 2], [1, 2])
    loaded["w"] = torch.arange(3.0)
    a = fresh["config"]
    b = loaded["config"]
    assert a["drop_schedule"] is a["lr_schedule"]
    assert b["drop_schedule"] is not b["lr_schedule"]
    paths = [
        save_checkpoint(tmp_path / f"{i}.pt", s) for i, s in enumerate((fresh, loaded))
    ]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    state = load_checkpoint(paths[1])
    assert state["config"] == fresh["config"] and state["pair"] == ([1, 2], [1, 2])


def test_full_disk_gives_the_cause_and_keeps_the_old_checkpoint(tmp_path):
    """A real write failure: the process may write files of 4 KiB at most."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    code = (
        "import resource, sys, torch\n"
        "from pyro_ssvi.app.checkpoint import WriteError, save_checkpoint\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    save_checkpoint(sys.argv[1], {'w': torch.zeros(10_000)})\n"
        "except WriteError as e:\n"
        "    print(e.errno, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == (
        f"{errno.EFBIG} cannot write {path}: file too large (a file size limit, "
        "see `ulimit -f`)\n"
    )
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_signals_wait_for_the_write_to_finish(tmp_path):
    path = tmp_path / "metrics.json"

    def write(fh):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of the write
        fh.write(b"complete")

    # Python's own Ctrl-C handler (a background job may inherit SIGINT ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(path, write)
    finally:
        signal.signal(signal.SIGINT, before)
    assert path.read_bytes() == b"complete"
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: caught.append(s))
    try:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            assert caught == []  # held
        assert caught == [signal.SIGTERM]  # delivered to the previous handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stale_temporary_files_are_removed(tmp_path):
    stale = [tmp_path / ".checkpoint.pt.k2j3h4g5.tmp", tmp_path / ".a[1].json.x.tmp"]
    kept = [tmp_path / "checkpoint.pt", tmp_path / ".other.pt.abc.tmp"]
    for path in stale + kept:
        path.write_bytes(b"")
    removed = remove_stale_temp_files(tmp_path, ["checkpoint.pt", "a[1].json"])
    assert sorted(removed) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
