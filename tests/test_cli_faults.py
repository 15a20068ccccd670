"""Bad input, kills and faults against ``pyro-ssvi``: one test per case of issue 10.

Every case ends in one ``pyro-ssvi: error: ...`` line that names the problem
and the fix, a non-zero exit code, no half-written or temporary file, and a
run directory the next command can use. Kills and signals are real signals
sent to a real ``pyro-ssvi`` process; everything else runs in process on
slices of the embedded MNIST.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from common import TINY_TRAINING, as_flags

from pyro_ssvi.app.checkpoint import load_checkpoint, save_checkpoint
from pyro_ssvi.app.cli import main
from pyro_ssvi.app.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = [*as_flags(TINY_TRAINING), "--no-progress"]
# 256 steps in epoch 1 (about a second or more): time to signal it mid-epoch.
LONG_EPOCHS = [
    "--train-limit", "4096", "--batch-size", "16", "--test-limit", "256",
    "--num-samples", "2", "--update-every", "50", "--no-progress",
]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("pyro-ssvi: error: ") and err.count("\n") == 1, err
    return err


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*.tmp")]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """An MLP run of 3 epochs, stopped (checkpoint written) after epoch 1."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    config = TrainConfig(epochs=3, **TINY_TRAINING)
    train(config, out, progress=False, stop_after_epoch=1)
    return out


@pytest.fixture
def run_dir(stopped_run, tmp_path):
    return Path(shutil.copytree(stopped_run, tmp_path / "run"))


# ------------------------------------------------ 1. unsafe or damaged files
def _bad_checkpoint(kind: str, path: Path, good: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'pwned'}",))

    if kind == "malicious":
        torch.save({"format": "pyro_ssvi.checkpoint", "version": 1, "x": Evil()}, path)
    elif kind == "pickled module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    else:  # "text"
        path.write_text("hello")


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize(
    "kind", ["malicious", "pickled module", "truncated", "foreign", "text"]
)
def test_unsafe_or_damaged_checkpoint_is_refused_in_one_line(
    run_dir, tmp_path, capsys, kind, command
):
    bad = tmp_path / "bad.pt"
    _bad_checkpoint(kind, bad, run_dir / "checkpoint.pt")
    if command == "resume":
        shutil.copy(bad, run_dir / "checkpoint.pt")
        bad = run_dir / "checkpoint.pt"
        before = sorted(p.name for p in run_dir.iterdir())
        argv = ["train", "--output-dir", str(run_dir), "--resume", "--no-progress"]
    else:
        argv = ["evaluate", str(bad), "--no-progress"]
    assert main(argv) == 1
    err = _one_error_line(capsys)
    assert str(bad) in err and "weights_only" not in err  # no advice to load unsafely
    # The fix fits the command: --resume was given no file, so it names the
    # run directory's own remedies, never "pass a checkpoint".
    if kind == "truncated":
        assert "restore it from a copy" in err, err
    elif command == "resume":
        assert "start the run anew with --overwrite" in err, err
        assert "pass a run directory" not in err, err
    else:
        assert "pass a run directory or the checkpoint.pt" in err, err
    assert not (tmp_path / "pwned").exists()
    if command == "resume":
        assert sorted(p.name for p in run_dir.iterdir()) == before


# ------------------------- 2. a run that stops before its first checkpoint
def test_divergence_in_epoch_1_leaves_the_directory_usable(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--output-dir", str(out), *TINY]
    assert main([*argv, "--optimizer", "sgd", "--lr", "1e20"]) == 1
    err = _one_error_line(capsys)
    assert "diverged in epoch 1" in err
    assert "there is no checkpoint: run the same command again" in err
    assert main(argv) == 0  # with a sane lr, no --overwrite needed
    assert json.loads((out / "config.json").read_text())["lr"] == 0.01


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_ssvi", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_when(proc: subprocess.Popen, path: Path, signum: int) -> str:
    """Send ``signum`` as soon as ``path`` exists; return the process's stderr."""
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    proc.send_signal(signum)
    return proc.communicate(timeout=120)[1]


def test_kill_before_the_first_checkpoint_then_resume_starts_again(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--output-dir", str(out), *LONG_EPOCHS]
    proc = _spawn(argv)
    _signal_when(proc, out / "config.json", signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint.pt").exists()
    assert main([*argv, "--resume"]) == 0
    assert "it stopped before its first checkpoint, so it starts again" in (
        capsys.readouterr().out
    )
    assert (out / "metrics.json").is_file() and _no_temp_files(out)


def test_ctrl_c_before_the_first_checkpoint_says_so_and_the_command_reruns(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--output-dir", str(out), *LONG_EPOCHS]
    proc = _spawn(argv)
    err = _signal_when(proc, out / "config.json", signal.SIGINT)
    assert proc.returncode == 130
    assert err == (
        f"pyro-ssvi: error: interrupted by SIGINT: training in {out} stopped in "
        "epoch 1 of 1. No epoch had finished, so there is no checkpoint: run the "
        "same command again to start over.\n"
    )
    assert main(argv) == 0 and (out / "metrics.json").is_file()


# ------------------------------------- 3. a checkpoint of another run's model
def test_checkpoint_of_another_model_in_the_run_directory_is_refused(
    run_dir, tmp_path, capsys
):
    lenet = tmp_path / "lenet"
    config = TrainConfig(model="lenet", epochs=3, **TINY_TRAINING)
    train(config, lenet, progress=False, stop_after_epoch=1)
    shutil.copy(lenet / "checkpoint.pt", run_dir / "checkpoint.pt")
    argv = ["train", "--output-dir", str(run_dir), "--resume", "--no-progress"]
    assert main(argv) == 1
    err = _one_error_line(capsys)
    assert f"{run_dir / 'checkpoint.pt'} does not belong to the run in " in err
    assert "model: 'lenet' in checkpoint.pt, 'mlp' in config.json" in err
    assert not (run_dir / "metrics.json").exists()
    assert main(["evaluate", str(run_dir)]) == 1  # evaluate refuses it too
    assert "does not belong to the run" in _one_error_line(capsys)


# -------------------------------------------------------- 4. a full disk
def test_full_disk_names_the_file_and_keeps_the_directory_usable(tmp_path, capsys):
    """The process may write files of 200 kB at most: the 1.4 MB checkpoint of
    epoch 1 fails as on a full disk (EFBIG instead of ENOSPC, same path)."""
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--output-dir", str(out), *TINY]
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from pyro_ssvi.app.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"pyro-ssvi: error: cannot write {out / 'checkpoint.pt'}: file too large "
        "(a file size limit, see `ulimit -f`). No epoch had finished, so there is "
        "no checkpoint: run the same command again to start over.\n"
    )
    # The checkpoint comes before the epoch's metrics line, which is not there.
    assert not (out / "metrics.jsonl").exists() and _no_temp_files(out)
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY
    assert main(argv) == 0  # the same command, with space: no --overwrite


def test_evaluate_output_is_checked_before_evaluating(run_dir, tmp_path, capsys):
    target = tmp_path / "missing" / "eval.json"
    assert main(["evaluate", str(run_dir), "--output", str(target)]) == 1
    err = _one_error_line(capsys)
    assert err == (
        f"pyro-ssvi: error: cannot write {target}: no such file or directory (its "
        "directory does not exist)\n"
    )
    assert "test_accuracy" not in capsys.readouterr().out  # nothing was evaluated
    assert main(["evaluate", str(run_dir), "--output", str(tmp_path)]) == 1
    assert f"cannot write {tmp_path}: is a directory" in _one_error_line(capsys)


# ------------------------------------------ 5. kills during writes, SIGTERM
def test_stale_temporary_files_are_removed_by_resume(run_dir):
    stale = [
        run_dir / ".checkpoint.pt.k2j3h4g5.tmp",  # what a kill mid-write leaves
        run_dir / "plots" / ".reliability.png.0a1b2c3d.tmp",
    ]
    for path in stale:
        path.write_bytes(b"torn")
    argv = ["train", "--output-dir", str(run_dir), "--resume", "--no-progress"]
    assert main(argv) == 0
    assert _no_temp_files(run_dir)


def test_sigterm_stops_like_ctrl_c_and_keeps_the_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "3", "--output-dir", str(out), *LONG_EPOCHS]
    proc = _spawn([a for a in argv if a != "--no-progress"])  # bars end their line
    err = _signal_when(proc, out / "checkpoint.pt", signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    kept = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert err.endswith(
        f"\npyro-ssvi: error: interrupted by SIGTERM: training in {out} stopped in "
        f"epoch {kept + 1} of 3. The checkpoint after epoch {kept} is kept: "
        "continue with --resume.\n"
    )
    assert err.count("pyro-ssvi: error") == 1 and _no_temp_files(out)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == list(range(1, kept + 1))
    assert main([*argv, "--resume"]) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_resume_in_a_new_process_reproduces_every_metric(tmp_path):
    """An uninterrupted run and one stopped after epoch 1 and resumed by a new
    process end with the same metrics.json, checkpoint_bytes included. The
    checkpoints differed in size: the resumed configuration's strings come
    from JSON (pickled apart, where a fresh run's constant strings are shared),
    and the new process's first evaluation imports scikit-learn's metrics,
    whose import draws from Python's RNG, which the checkpoint saves."""
    import sklearn.metrics  # noqa: F401 (this long-lived process: imported already)

    config = TrainConfig(epochs=2, **TINY_TRAINING)
    full = train(config, tmp_path / "full", progress=False)
    train(config, tmp_path / "cut", progress=False, stop_after_epoch=1)
    argv = ["train", "--output-dir", str(tmp_path / "cut"), "--resume"]
    # The same thread count: float sums in another order differ in the last bits.
    proc = _spawn([*argv, "--no-progress", "--threads", str(torch.get_num_threads())])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    times = {"wall_time_s", "train_time_s"}  # the only fields that may differ
    assert {k: v for k, v in resumed.items() if k not in times} == {
        k: v for k, v in full.items() if k not in times
    }


# ---------------------------------------- 6. a foreign guide in a checkpoint
@pytest.mark.parametrize("guide", ["ssvi", "autonormal"])
def test_guide_state_of_another_model_is_one_line(tmp_path, capsys, guide):
    """The guide is built with the model's arguments before loading, so a guide
    state of another model (here a digits MLP, 64 inputs) is refused."""
    mnist, digits = tmp_path / "mnist", tmp_path / "digits"
    for out, dataset in ((mnist, "mnist"), (digits, "digits")):
        config = TrainConfig(epochs=2, guide=guide, dataset=dataset, **TINY_TRAINING)
        train(config, out, progress=False, stop_after_epoch=1)
    state = load_checkpoint(mnist / "checkpoint.pt")
    state["guide"] = load_checkpoint(digits / "checkpoint.pt")["guide"]
    del state["format"], state["version"]
    save_checkpoint(mnist / "checkpoint.pt", state)
    argv = ["train", "--output-dir", str(mnist), "--resume", "--no-progress"]
    for command in (["evaluate", str(mnist / "checkpoint.pt")], argv):
        assert main(command) == 1
        err = _one_error_line(capsys)
        assert f"{mnist / 'checkpoint.pt'} does not fit the mlp for mnist" in err
        assert "use that run's own checkpoint" in err


# --------------------------------------------- 7. the final evaluation
def test_final_evaluation_shows_progress_and_the_thread_count(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--output-dir", str(out), "--threads", "2"]
    threads = torch.get_num_threads()
    assert main([*argv, *as_flags(TINY_TRAINING)]) == 0
    captured = capsys.readouterr()
    # 256 test and 256 OOD images, 3 Monte Carlo passes and 1 with mean weights.
    assert "final evaluation (3 samples): 100%" in captured.err
    assert "2048/2048" in captured.err
    assert "2 torch threads; run directory" in captured.out
    assert json.loads((out / "config.json").read_text())["env"]["num_threads"] == 2
    assert torch.get_num_threads() == threads  # restored after the command
