"""One owner per run directory: real processes racing for it, and real kills.

Every second command into a directory that a running command owns is
refused in one ``pyro-ssvi: error: ...`` line naming the running process,
and changes nothing; a lock left by a SIGKILLed process is taken over by the
next command. The processes are real ``pyro-ssvi`` processes (spawned, or
forked from a server that has imported the package), the signals real.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from common import TINY_TRAINING, as_flags

from pyro_ssvi.app.checkpoint import load_checkpoint
from pyro_ssvi.app.cli import main
from pyro_ssvi.app.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
# Written literally (not imported), so that these tests run on any version.
LOCK = ".pyro-ssvi.lock"
OWNER = LOCK + ".owner"
TINY = [*as_flags(TINY_TRAINING), "--no-progress"]
# 256 steps an epoch (a second or more each): time to act while it runs.
LONG_EPOCHS = [
    "--train-limit", "4096", "--batch-size", "16", "--test-limit", "256",
    "--num-samples", "2", "--update-every", "50", "--no-progress",
]  # fmt: skip


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_ssvi", *argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("pyro-ssvi: error: ") and err.count("\n") == 1, err
    assert captured.out == "", captured.out  # the refusal is the only output
    return err


def _listing(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _check_finished_run(out: Path) -> dict:
    """Every file of a finished run is whole, and nothing temporary is left."""
    metrics = json.loads((out / "metrics.json").read_text())
    json.loads((out / "config.json").read_text())
    json.loads((out / "subspace_updates.json").read_text())
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, metrics["epochs"] + 1))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == metrics["epochs"]
    assert metrics["checkpoint_bytes"] == (out / "checkpoint.pt").stat().st_size
    for png in (out / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    assert not (out / OWNER).exists()  # the owner's record goes with it
    assert (out / LOCK).read_bytes() == b""  # the lock file stays, empty
    return metrics


# ------------------------------------------------ a second command, refused
def test_second_command_into_a_running_run_is_refused_and_touches_nothing(
    tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--output-dir", str(out), *LONG_EPOCHS]
    proc = _spawn(argv)
    _wait_for(out / "config.json", proc)
    # What a kill of the running job's own write would look like: the second
    # command's start-up clean-up must not touch it while the job runs.
    temp = out / ".checkpoint.pt.k2j3h4g5.tmp"
    temp.write_bytes(b"being written")
    running = (
        f"--output-dir {out} is in use by another pyro-ssvi process (pid "
        f"{proc.pid}, `pyro-ssvi train --epochs 2 --output-dir {out} "
    )
    config = out / "config.json"
    stamp = (config.read_bytes(), config.stat().st_mtime_ns)
    for second in (
        argv,
        [*argv, "--resume"],
        [*argv, "--overwrite"],
        ["compare", "--output-dir", str(out), "--epochs", "1", *TINY],
    ):
        assert main(second) == 1
        err = _one_error_line(capsys)
        assert running in err and "nothing was changed" in err, err
        assert "wait for it to end (or stop it), or choose another directory" in err
        assert proc.poll() is None, "the first run ended before the test was done"
        assert temp.read_bytes() == b"being written"
        assert (config.read_bytes(), config.stat().st_mtime_ns) == stamp
        assert json.loads((out / OWNER).read_text())["pid"] == proc.pid
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err  # the first run was not disturbed
    temp.unlink()
    _check_finished_run(out)


def test_a_lock_left_by_sigkill_is_taken_over_by_the_next_command(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--output-dir", str(out), *LONG_EPOCHS]
    argv[argv.index("4096")] = "1024"  # 64 steps an epoch
    proc = _spawn(argv)
    _wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # The lock file and the killed process's record stay; the kernel has
    # released the lock itself.
    assert json.loads((out / OWNER).read_text())["pid"] == proc.pid
    assert (out / LOCK).read_bytes() == b""
    assert main([*argv, "--resume"]) == 0
    _check_finished_run(out)


def test_lock_files_are_not_foreign_files_of_a_run_directory(tmp_path, capsys):
    """A directory that holds only a lock, the stale record of a killed owner
    and a torn temporary file of that record takes a new run (no --overwrite)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_bytes(b"")
    # pid_max is at most 2**22 on Linux: no process has this pid.
    record = {"pid": 2**22 + 12345, "host": socket.gethostname(), "command": "x"}
    (out / OWNER).write_text(json.dumps(record))
    (out / f".{OWNER}.0a1b2c3d.tmp").write_text('{"pid": ')
    argv = ["train", "--epochs", "1", "--output-dir", str(out), *TINY]
    assert main(argv) == 0
    _check_finished_run(out)


def _hold(paths: list[str]) -> subprocess.Popen:
    """A real process that owns ``paths`` (directories, or ``evaluate --output``
    files) until its stdin closes."""
    code = (
        "import sys\n"
        "from contextlib import ExitStack\n"
        "from pathlib import Path\n"
        "from pyro_ssvi.app.training import own_directory, own_output_file\n"
        "with ExitStack() as stack:\n"
        "    for p in sys.argv[1:]:\n"
        "        own = own_directory if p.endswith('/') else own_output_file\n"
        "        stack.enter_context(own(Path(p)))\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *paths],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def test_evaluate_output_and_compare_are_refused_while_another_process_owns_them(
    tmp_path, capsys
):
    run = tmp_path / "run"
    train(TrainConfig(epochs=1, **TINY_TRAINING), run, progress=False)
    report, cmp_dir = tmp_path / "eval.json", tmp_path / "cmp"
    holder = _hold([str(report), f"{cmp_dir}/"])
    try:
        argv = ["evaluate", str(run), "--num-samples", "1", "--output", str(report)]
        assert main(argv) == 1
        err = _one_error_line(capsys)
        assert f"--output {report} is in use by another pyro-ssvi process (pid " in err
        assert f"{holder.pid}, " in err and "or write to another file" in err
        assert not report.exists()
        compare = ["compare", "--densities", "0.1", "--epochs", "1", *TINY]
        assert main([*compare, "--output-dir", str(cmp_dir)]) == 1
        err = _one_error_line(capsys)
        assert f"--output-dir {cmp_dir} is in use by another" in err
        assert f"(pid {holder.pid}, " in err
        assert sorted(p.name for p in cmp_dir.iterdir()) == [LOCK, OWNER]
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
        holder.stdout.close()
    assert main(argv) == 0  # once it is gone, evaluate writes its report
    assert json.loads(report.read_text())["num_samples"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".eval.json.lock",
        "cmp",
        "eval.json",
        "run",
    ]


# ----------------------------- stress: racing starts, kills and restarts
def _cli_child(argv: list[str], log: str) -> None:
    """A ``pyro-ssvi`` process forked from the server: output to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["pyro-ssvi", *argv]  # what its owner record shows
    sys.exit(main(argv))


_PRELOAD = [
    "torch._dynamo",  # imported by torch.optim's first optimiser: 2 s
    "pyro_ssvi.app.cli",
    "pyro_ssvi.app.training",
    "pyro_ssvi.app.plots",
    "pyro_ssvi.app.data",
    "pyro_ssvi.app.models",
    "pyro_ssvi.guides",
    "sklearn.metrics",
    "matplotlib.pyplot",
]


@pytest.fixture(scope="module")
def forks():
    """Start ``pyro-ssvi`` processes in a fraction of a second each: forked from
    a server process that has imported the package (a fresh interpreter
    would spend seconds importing torch)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _start(ctx, argv: list[str], log: Path):
    proc = ctx.Process(target=_cli_child, args=(argv, str(log)))
    proc.start()
    return proc


# One epoch of 64 images in two batches, 64 test and OOD images, one sample.
STRESS = [
    "--epochs", "2", "--train-limit", "64", "--batch-size", "32",
    "--test-limit", "64", "--num-samples", "1", "--update-every", "1",
    "--threads", "1", "--no-progress",
]  # fmt: skip


def _record_pid(out: Path, proc) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return json.loads((out / OWNER).read_text())["pid"]
        except (OSError, ValueError):
            assert proc.exitcode is None, "the run ended before it owned its directory"
            time.sleep(0.005)
    raise AssertionError("no owner record appeared")


@pytest.mark.slow
def test_twenty_double_starts_and_ten_kills_lose_no_run(tmp_path, forks):
    """20 double starts: 10 identical commands started together (racing for the
    lock), 10 second commands (--resume, --overwrite) started while the first
    owns the directory; in every pair one run finishes whole and the other is
    refused in one line naming it. Then (at least) 10 runs SIGKILLed at random
    moments and started again: each restart finishes the run, every file whole."""
    rng = random.Random(0)
    pairs = []
    for i in range(20):
        out = tmp_path / f"double{i}"
        argv = ["train", "--output-dir", str(out), *STRESS]
        logs = (tmp_path / f"double{i}.a.log", tmp_path / f"double{i}.b.log")
        first = _start(forks, argv, logs[0])
        if i % 2:  # a second command while the first owns the directory
            _record_pid(out, first)
            argv = [*argv, "--resume" if i % 4 == 1 else "--overwrite"]
        second = _start(forks, argv, logs[1])
        pairs.append((out, (first, second), logs))
        if i % 2:  # two pairs at a time: two cores
            for _, procs, _ in pairs[-2:]:
                for proc in procs:
                    proc.join(120)
    for out, procs, logs in pairs:
        for proc in procs:
            proc.join(120)
        codes = [proc.exitcode for proc in procs]
        assert sorted(codes) == [0, 1], (out, codes, [p.read_text() for p in logs])
        winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
        err = logs[loser].read_text()
        assert err.startswith(
            f"pyro-ssvi: error: --output-dir {out} is in use by another pyro-ssvi "
            f"process (pid {procs[winner].pid}, `pyro-ssvi train --output-dir {out} "
        ), err
        assert err.count("\n") == 1 and "nothing was changed" in err, err
        _check_finished_run(out)

    kills, latest, i = 0, 1.2, 0
    while kills < 10 and i < 30:  # two at a time: two cores
        batch = []
        for _ in range(2):
            out = tmp_path / f"killed{i}"
            argv = ["train", "--output-dir", str(out), *STRESS]
            batch.append((out, argv, _start(forks, argv, out.with_suffix(".log"))))
            i += 1
        for out, _, proc in batch:
            _record_pid(out, proc)
        start = time.monotonic()
        delays = [rng.uniform(0.0, latest) for _ in batch]  # writes included
        for delay, (_, _, proc) in sorted(zip(delays, batch), key=lambda d: d[0]):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            proc.kill()  # SIGKILL
        restarts = []
        for out, argv, proc in batch:
            proc.join(60)
            if proc.exitcode == 0:  # it finished first: kill the next ones sooner
                latest *= 0.7
                continue
            assert proc.exitcode == -signal.SIGKILL
            kills += 1
            stopped = (out / "checkpoint.pt").exists() or (out / "config.json").exists()
            log = out.with_suffix(".again.log")
            argv = [*argv, "--resume"] if stopped else argv
            restarts.append((out, log, _start(forks, argv, log)))
        for out, log, again in restarts:
            again.join(120)
            assert again.exitcode == 0, log.read_text()
            _check_finished_run(out)
    assert kills >= 10
