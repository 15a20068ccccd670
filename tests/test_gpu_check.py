"""benchmarks/gpu_check.py: its smoke mode on the CPU, timeouts, no-GPU refusal."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import benchmark_scripts
import pytest
import torch


@pytest.fixture(scope="module")
def gpu_check():
    return benchmark_scripts.load("gpu_check")


@pytest.mark.slow
def test_smoke_mode_runs_every_stage_on_the_cpu(gpu_check, tmp_path):
    """The GPU check's code paths, shrunk, on this machine (about 100 s)."""
    start = time.perf_counter()
    assert gpu_check.main(["--device", "cpu", "--smoke", "--out", str(tmp_path)]) == 0
    assert time.perf_counter() - start < gpu_check.PLANS["smoke"]["time_limit"]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["pytest", "mnist", "resnet18", "benchmark"]
    assert all(s["status"] == "passed" for s in stages.values()) and report["passed"]
    counts = stages["pytest"]["details"]
    assert counts["tests"] >= 3 and counts["failures"] == counts["errors"] == 0
    if not torch.cuda.is_available():
        assert counts["skipped"] == counts["tests"]
    resnet = stages["resnet18"]["details"]
    assert resnet["num_updates"] == 3 and set(resnet["lrt_paths"]) == {"net.fc.weight"}
    assert len(stages["benchmark"]["details"]["rows"]) == 2 * 3
    for name in ("mnist", "resnet18"):
        assert (tmp_path / "runs" / name / "metrics.json").is_file()
    assert (tmp_path / "bench" / "results.json").is_file()
    text = (tmp_path / "gpu_check.md").read_text()
    assert "PASSED" in text and "| resnet18 | 0.1 | ssvi_lrt_sparse |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_without_a_gpu_it_stops_at_once_with_one_line(gpu_check, tmp_path, capsys):
    start = time.perf_counter()
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert time.perf_counter() - start < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device is available" in err[0]
    assert "--device cpu --smoke" in err[0]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["passed"] and report["stages"] == []
    assert report["error"].startswith("no CUDA device")


def test_bad_device_is_refused(gpu_check, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "tpu"])
    assert e.value.code == 2
    assert "--device must be cuda, cuda:N or cpu, got 'tpu'" in capsys.readouterr().err


def test_timeout_kills_the_whole_process_group(gpu_check, tmp_path):
    """A stage that hangs is killed with the processes it started."""
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid));"
        "time.sleep(60)"
    )
    log = tmp_path / "logs" / "hang.log"
    code, seconds = gpu_check.run_command(
        [sys.executable, "-c", script], log, timeout=3.0, env=dict(os.environ)
    )
    assert code is None and 3.0 <= seconds < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        if not _running(grandchild):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {grandchild} survived the timeout")
    assert log.read_text().startswith("$ ")


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stages_left_without_time_are_reported_not_run(gpu_check, tmp_path):
    check = gpu_check.Check("cpu", True, tmp_path, time_limit=0.0)
    stage = check.mnist()
    shutil.rmtree(check.work)
    assert stage.status == "not run" and stage.returncode is None
    assert stage.problems == ["no time left within the overall limit"]
