"""One-shot GPU check: the CUDA paths of pyro_ssvi, end to end, in under 8 minutes.

On a CUDA machine, from the repository root (not part of the test suite)::

    python benchmarks/gpu_check.py                       # to benchmarks/results/gpu/
    python benchmarks/gpu_check.py --device cpu --smoke  # same paths, CPU, < 2 min

Four stages, each a subprocess with a timeout (its whole process group is
killed when it runs over), within one overall time limit:

1. ``pytest``: the CUDA-marked tests (``pytest -m gpu``); on a GPU none may
   be skipped.
2. ``mnist``: one epoch of the default job, ``pyro-ssvi train --epochs 1
   --device cuda`` (embedded MNIST, MLP, density 0.1); test accuracy >= 0.9.
3. ``resnet18``: the paper-scale recipe's flags (SGD, prior N(0, 0.005^2),
   KL weight 0.01 annealed, local reparameterisation, crop + flip) on
   synthetic CIFAR-10-format files: 2 epochs of 150 steps of batch 128, so
   that subspace updates run at steps 100 and 200, with
   ``--sparse-compute auto`` timing the classifier's sparse kernels on the GPU.
4. ``benchmark``: ``benchmarks/run.py`` on the device: dense Pyro against
   SSVI at densities 0.1 and 0.05, with and without LRT and sparse compute,
   for the three MLPs and ResNet-18, all at batch 128: every variant of
   ``benchmarks/variants.py`` that can run (no peak-memory subprocesses;
   ``ssvi_sparse`` measures sparse weight sampling, off by default on GPUs);
   ``--smoke``: the small MLP and
   ResNet-18 at density 0.1, dense Pyro and SSVI without and with LRT and
   sparse compute.

Results: ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (stages, times,
metrics, the benchmark table), ``<out>/bench/`` (``run.py``'s own results),
``<out>/logs/<stage>.log`` and each run's ``metrics.json`` under
``<out>/runs/``. Exit status 0 when every stage passed, 1 when one failed or
timed out, 2 when ``--device cuda`` finds no GPU (checked in a subprocess,
so a broken driver cannot hang this process). ``--smoke`` shrinks every
stage (a few hundred images, a few steps) but runs the same commands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # check this checkout, whatever is installed
    sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu"

#: Sizes and time limits (seconds) of the full check and of ``--smoke``.
PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "time_limit": 480,
        "timeouts": {"pytest": 120, "mnist": 120, "resnet18": 180, "benchmark": 240},
        "mnist_args": [],
        "mnist_min_accuracy": 0.9,
        "cifar_train_per_batch": 3840,  # 5 files: 19,200 images, 150 steps of 128
        "cifar_test": 1000,
        "resnet_args": [
            "--epochs",
            "2",
            "--batch-size",
            "128",
            "--kl-anneal-epochs",
            "1",
        ],
        "resnet_updates": 2,  # steps 100 and 200, below 0.75 * 300
        "resnet_eval": ["--num-samples", "4", "--eval-batch-size", "500"],
        "bench_models": ["mlp", "mlp2048", "wide_mlp", "resnet18"],
        "bench_densities": ["0.1", "0.05"],
        "bench_variants": None,  # every variant that can run here
        "bench_args": ["--reps", "5", "--steps", "5", "--batch", "128"],
    },
    "smoke": {
        "time_limit": 150,
        "timeouts": {"pytest": 60, "mnist": 45, "resnet18": 60, "benchmark": 75},
        "mnist_args": ["--train-limit", "2048", "--test-limit", "512"],
        "mnist_min_accuracy": 0.3,  # 16 steps; chance is 0.1
        "cifar_train_per_batch": 8,  # 40 images, 5 steps of 8 per epoch
        "cifar_test": 16,
        "resnet_args": [
            "--epochs", "2", "--batch-size", "8", "--kl-anneal-epochs", "1",
            "--update-every", "2",
        ],  # fmt: skip
        "resnet_updates": 3,  # steps 2, 4 and 6, below 0.75 * 10
        "resnet_eval": ["--num-samples", "2", "--eval-batch-size", "16"],
        "bench_models": ["mlp", "resnet18"],
        "bench_densities": ["0.1"],  # a ResNet-18 step takes seconds on a CPU
        # dense Pyro; SSVI without, and with, LRT and sparse compute
        "bench_variants": ["pyro_dense", "ssvi", "ssvi_lrt_sparse"],
        "bench_args": ["--reps", "1", "--steps", "1", "--no-update-cost"],
    },
}
#: The paper-scale recipe's flags (docs/guide/cifar.md), without
#: data, length, batch size, device and output.
RECIPE_FLAGS = ["--recipe", "reference-cifar"]


@dataclass
class Stage:
    """The outcome of one stage."""

    name: str
    status: str = "not run"  # passed | failed | timed out | not run
    seconds: float = 0.0
    returncode: int | None = None
    command: list[str] = field(default_factory=list)
    log: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------ subprocesses
def run_command(
    command: list[str], log: Path, timeout: float, env: dict[str, str]
) -> tuple[int | None, float]:
    """Run ``command`` with output to ``log``; kill its process group on timeout.

    Returns:
        ``(returncode, seconds)``; the return code is None after a timeout.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, workers included
        )
        try:
            code: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = None
    return code, time.perf_counter() - start


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group this script started."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def probe_device(device: str, timeout: float = 120.0) -> dict[str, Any]:
    """What torch sees, asked in a subprocess (a hung driver cannot hang us)."""
    code = (
        "import json, torch; c = torch.cuda.is_available(); print(json.dumps({"
        "'torch': torch.__version__, 'cuda_build': torch.version.cuda, "
        "'cuda_available': c, 'device_count': torch.cuda.device_count() if c else 0, "
        "'gpu': torch.cuda.get_device_name() if c else None, "
        "'capability': list(torch.cuda.get_device_capability()) if c else None, "
        "'gpu_memory_gb': round(torch.cuda.get_device_properties(0).total_memory"
        " / 2**30, 1) if c else None, 'threads': torch.get_num_threads()}))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(),
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"asking torch about {device} took over {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or ["torch failed"]}
    info = json.loads(out.stdout.strip().splitlines()[-1])
    info.update(python=platform.python_version(), machine=platform.machine())
    return info


# ------------------------------------------------------------ the stages
class Check:
    """Runs the stages of one plan against one device, within a time limit."""

    def __init__(self, device: str, smoke: bool, out: Path, time_limit: float):
        self.device, self.smoke, self.out = device, smoke, out
        self.plan = PLANS["smoke" if smoke else "full"]
        self.deadline = time.monotonic() + time_limit
        self.env = _env()
        self.work = Path(tempfile.mkdtemp(prefix="pyro_ssvi_gpu_check_"))

    def _run(self, stage: Stage, command: list[str]) -> bool:
        """Run a stage's command within its timeout and the time left."""
        left = self.deadline - time.monotonic()
        timeout = min(self.plan["timeouts"][stage.name], left)
        stage.command = command
        stage.log = str(Path("logs") / f"{stage.name}.log")
        if timeout < 5:
            stage.status = "not run"
            stage.problems.append("no time left within the overall limit")
            return False
        code, stage.seconds = run_command(
            command, self.out / stage.log, timeout, self.env
        )
        stage.returncode = code
        if code is None:
            stage.status = "timed out"
            stage.problems.append(f"killed after {timeout:.0f} s")
            return False
        if code != 0:
            stage.status = "failed"
            stage.problems.append(f"exit status {code}")
            return False
        stage.status = "passed"
        return True

    def _fail(self, stage: Stage, problem: str) -> None:
        stage.status = "failed"
        stage.problems.append(problem)

    def pytest(self) -> Stage:
        stage = Stage("pytest")
        report = self.work / "pytest.xml"
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs"]
        command += ["-p", "no:cacheprovider", f"--junitxml={report}", "tests"]
        self._run(stage, command)
        if report.is_file():
            stage.details = _junit_counts(report)
            if not self.smoke and stage.details.get("skipped", 0):
                self._fail(stage, "CUDA tests were skipped on a CUDA machine")
            if not stage.details.get("tests", 0):
                self._fail(stage, "no test marked gpu was collected")
        return stage

    def mnist(self) -> Stage:
        stage = Stage("mnist")
        run_dir = self.work / "mnist"
        command = [sys.executable, "-m", "pyro_ssvi", "train", "--epochs", "1"]
        command += ["--device", self.device, "--output-dir", str(run_dir)]
        command += ["--no-progress", *self.plan["mnist_args"]]
        if self._run(stage, command):
            stage.details = self._collect(run_dir, "mnist")
            accuracy = stage.details.get("test_accuracy")
            if accuracy is None or accuracy < self.plan["mnist_min_accuracy"]:
                self._fail(stage, f"test accuracy {accuracy} after one epoch")
        return stage

    def resnet18(self) -> Stage:
        stage = Stage("resnet18")
        from pyro_ssvi.app.data import write_synthetic_cifar

        data = write_synthetic_cifar(
            self.work / "cifar",
            num_train_per_batch=self.plan["cifar_train_per_batch"],
            num_test=self.plan["cifar_test"],
        )
        run_dir = self.work / "resnet18"
        command = [sys.executable, "-m", "pyro_ssvi", "train", *RECIPE_FLAGS]
        command += ["--dataset", "cifar10", "--data-dir", str(data)]
        command += ["--ood-dataset", "none", "--sparse-compute", "auto"]
        command += [*self.plan["resnet_args"], *self.plan["resnet_eval"]]
        command += ["--device", self.device, "--output-dir", str(run_dir)]
        command += ["--no-progress"]
        if self._run(stage, command):
            stage.details = self._collect(run_dir, "resnet18")
            self._check_resnet(stage)
        return stage

    def _check_resnet(self, stage: Stage) -> None:
        d = stage.details
        if d.get("num_updates") != self.plan["resnet_updates"]:
            self._fail(stage, f"{d.get('num_updates')} subspace updates")
        if abs(d.get("density", 0.0) - 0.1) > 1e-3:
            self._fail(stage, f"density {d.get('density')}")
        for key in ("test_accuracy", "test_nll", "train_loss"):
            value = d.get(key)
            if not isinstance(value, (int, float)) or value != value:
                self._fail(stage, f"{key} is {value}")

    def benchmark(self) -> Stage:
        stage = Stage("benchmark")
        bench = self.out / "bench"
        command = [sys.executable, str(ROOT / "benchmarks" / "run.py")]
        models, densities = self.plan["bench_models"], self.plan["bench_densities"]
        variants = _variants(self.plan["bench_variants"])
        command += ["--models", *models, *self.plan["bench_args"]]
        command += ["--densities", *densities, "--variants", *variants]
        command += ["--device", self.device, "--no-memory", "--out", str(bench)]
        if self._run(stage, command):
            rows = json.loads((bench / "results.json").read_text())["rows"]
            stage.details = {"rows": [_bench_row(r) for r in rows]}
            expected = len(models) * len(densities) * len(variants)
            if len(rows) != expected:
                self._fail(stage, f"{len(rows)} benchmark rows, expected {expected}")
        return stage

    def _collect(self, run_dir: Path, name: str) -> dict[str, Any]:
        """Key metrics of a run; its metrics.json is kept under <out>/runs/."""
        metrics = json.loads((run_dir / "metrics.json").read_text())
        epochs = [
            json.loads(line)
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        keep = self.out / "runs" / name
        keep.mkdir(parents=True, exist_ok=True)
        for file in ("metrics.json", "metrics.jsonl", "config.json"):
            shutil.copy(run_dir / file, keep / file)
        keys = ("test_accuracy", "test_nll", "test_ece", "density", "num_updates")
        details = {k: metrics.get(k) for k in keys}
        details["train_loss"] = epochs[-1].get("train_loss") if epochs else None
        details["epoch_time_s"] = [round(e["epoch_time_s"], 2) for e in epochs]
        details["wall_time_s"] = metrics.get("wall_time_s")
        details["lrt_paths"] = metrics.get("lrt_paths")
        return details

    def run(self) -> list[Stage]:
        try:
            return [self.pytest(), self.mnist(), self.resnet18(), self.benchmark()]
        finally:
            shutil.rmtree(self.work, ignore_errors=True)


def _variants(wanted: list[str] | None) -> list[str]:
    """Those of ``wanted`` (default: all) that ``benchmarks/variants.py`` has
    and can run here (bayesian-torch is optional)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from variants import VARIANTS, available
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return [v for v in VARIANTS if (wanted is None or v in wanted) and available(v)]


def _junit_counts(path: Path) -> dict[str, int]:
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    attrs = suite.attrib if suite is not None else {}
    return {k: int(attrs.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _bench_row(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "density", "variant", "median_step_ms", "ratio_to_pyro_dense")
    return {k: row.get(k) for k in keys}


# ------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: stages, then the benchmark table."""
    env = report["environment"]
    lines = [
        f"# GPU check ({'smoke, ' if report['smoke'] else ''}"
        f"device {report['device']})",
        "",
        f"{env.get('gpu') or env.get('machine')}; torch {env.get('torch')} "
        f"(CUDA {env.get('cuda_build')}); {report['seconds']:.0f} s in all; "
        f"{'PASSED' if report['passed'] else 'FAILED'}",
        "",
        "| stage | status | seconds | details |",
        "|---|---|---|---|",
    ]
    for s in report["stages"]:
        details = {k: v for k, v in s["details"].items() if k != "rows"}
        if "rows" in s["details"]:
            details["rows"] = f"{len(s['details']['rows'])}, below"
        text = "; ".join(s["problems"]) or json.dumps(details)
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {text} |")
    bench = next((s for s in report["stages"] if s["name"] == "benchmark"), None)
    if bench and bench["details"].get("rows"):
        lines += ["", "| model | density | variant | step (ms) | vs dense Pyro |"]
        lines.append("|---|---|---|---|---|")
        for r in bench["details"]["rows"]:
            ratio = r["ratio_to_pyro_dense"]
            lines.append(
                f"| {r['model']} | {r['density']:g} | {r['variant']} "
                f"| {r['median_step_ms']:.2f} "
                f"| {'n/a' if ratio is None else f'{ratio:.3f}x'} |"
            )
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, same paths")
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds")
    args = parser.parse_args(argv)
    if not (args.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", args.device)):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    out = args.out or DEFAULT_OUT
    plan = PLANS["smoke" if args.smoke else "full"]
    start = time.perf_counter()
    env = probe_device(args.device)
    report: dict[str, Any] = {"device": args.device, "smoke": args.smoke}
    report["environment"] = env
    if args.device.startswith("cuda") and not env.get("cuda_available"):
        why = env.get("error") or (
            f"torch {env.get('torch')} (CUDA build {env.get('cuda_build')}) sees "
            "no GPU"
        )
        print(
            f"gpu_check: --device {args.device}, but no CUDA device is available: "
            f"{why}. Run it on a GPU machine, or use --device cpu --smoke.",
            file=sys.stderr,
        )
        report.update(stages=[], passed=False, seconds=time.perf_counter() - start)
        report["error"] = f"no CUDA device: {why}"
        write_report(out, report)
        return 2
    check = Check(args.device, args.smoke, out, args.time_limit or plan["time_limit"])
    stages = check.run()
    report["stages"] = [asdict(s) for s in stages]
    report["passed"] = all(s.status == "passed" for s in stages)
    report["seconds"] = time.perf_counter() - start
    write_report(out, report)
    for s in stages:
        print(f"{s.name:10s} {s.status:9s} {s.seconds:6.0f} s  {'; '.join(s.problems)}")
        if s.status != "passed" and s.log:
            print(_tail(out / s.log))
    print(f"report: {out / 'gpu_check.md'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
