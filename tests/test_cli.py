"""The pyro-ssvi command, in process, on small slices of the real embedded data."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from common import TINY_TRAINING, as_flags
from data_fixtures import cifar_batch, write_cifar_pickle

import pyro_ssvi
from pyro_ssvi import CRITERIA
from pyro_ssvi.app.checkpoint import load_checkpoint, save_checkpoint
from pyro_ssvi.app.cli import main
from pyro_ssvi.app.metrics import ece, ood_metrics
from pyro_ssvi.app.predict import predict
from pyro_ssvi.app.training import (
    PLOTS_BY_TASK,
    TrainConfig,
    TrainingDiverged,
    load_run,
    train,
)

# 512 MNIST training images, 256 test and OOD images, a few subspace updates.
TINY = [*as_flags(TINY_TRAINING), "--no-progress"]
TINY_CONFIG = TINY_TRAINING
FINAL_KEYS = {
    "test_accuracy",
    "test_nll",
    "test_ece",
    "ood_auroc",
    "ood_auroc_mi",
    "density",
    "num_variational_params",
    "wall_time_s",
}


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_train_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--output-dir", str(out), *TINY]) == 0
    metrics = _metrics(out)
    assert FINAL_KEYS <= set(metrics)
    assert metrics["density"] == pytest.approx(0.1, abs=1e-3)
    assert 0.5 < metrics["ood_auroc"] <= 1 and 0.3 < metrics["test_accuracy"] <= 1
    assert metrics["num_updates"] == 3  # steps 3, 6 and 9 of 16 (updates stop at 12)
    config = json.loads((out / "config.json").read_text())
    assert config["density"] == 0.1 and config["epochs"] == 2
    rows = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2]
    updates = json.loads((out / "subspace_updates.json").read_text())
    assert [u["step"] for u in updates] == [3, 6, 9]
    written = sorted(p.name for p in (out / "plots").iterdir())
    assert written == sorted(PLOTS_BY_TASK["classification"])
    for name in written:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # Mean-weight metrics, OOD detection included, from the saved guide.
    run, _ = load_run(out)
    pred, ood = (
        predict(run.model, run.guide, data, mean_weights=True, batch_size=1000)
        for data in (run.test_data, run.ood_data)
    )
    expected = ood_metrics(pred.probs, ood.probs)
    assert {f"{k}_mean_weights": v for k, v in expected.items()} == {
        f"{k}_mean_weights": metrics[f"{k}_mean_weights"] for k in expected
    }
    assert metrics["test_ece_mean_weights"] == ece(pred.probs, pred.labels)


def test_version_and_option_names_in_the_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"pyro-ssvi {pyro_ssvi.__version__}\n"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    removal = re.search(r"--removal REMOVAL (.*?) --", text).group(1)
    assert removal == f"removal criterion: {', '.join(CRITERIA)} (default: snr_abs)"
    ood = re.search(r"--ood-dataset DATASET (.*?) --", text).group(1)
    assert ood.count("default") == 1 and "(default: None)" not in text
    assert "--threads N" in text and "--stop-updates-fraction FRACTION" in text


def test_stop_updates_fraction_and_configurations_with_the_old_name(tmp_path, capsys):
    # 16 steps, updates every 3 steps until step 8 (fraction 0.5): steps 3 and 6.
    out = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--output-dir", str(out), *TINY]
    assert main([*argv, "--stop-updates-fraction", "0.5"]) == 0
    assert [
        u["step"] for u in json.loads((out / "subspace_updates.json").read_text())
    ] == [3, 6]
    assert main([*argv, "--stop-updates-at", "0.5", "--overwrite"]) == 0
    assert "--stop-updates-at is now --stop-updates-fraction" in capsys.readouterr().err
    assert _metrics(out)["num_updates"] == 2
    # A run saved before the rename (config.json and checkpoint) resumes.
    old = tmp_path / "old"
    config = TrainConfig(epochs=2, stop_updates_fraction=0.5, **TINY_CONFIG)
    train(config, old, progress=False, stop_after_epoch=1)
    saved = json.loads((old / "config.json").read_text())
    saved["stop_updates_at"] = saved.pop("stop_updates_fraction")
    (old / "config.json").write_text(json.dumps(saved))
    state = load_checkpoint(old / "checkpoint.pt")
    state["config"]["stop_updates_at"] = state["config"].pop("stop_updates_fraction")
    del state["format"], state["version"]
    save_checkpoint(old / "checkpoint.pt", state)
    assert main(["train", "--output-dir", str(old), "--resume", "--no-progress"]) == 0
    assert _metrics(old)["num_updates"] == 2


@pytest.mark.parametrize("guide", ["ssvi", "autonormal"])
def test_resume_ends_exactly_like_an_uninterrupted_run(tmp_path, guide):
    config = TrainConfig(epochs=3, guide=guide, **TINY_CONFIG)
    full = train(config, tmp_path / "full", progress=False)
    assert train(config, tmp_path / "cut", progress=False, stop_after_epoch=1) == {}
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    argv = ["train", "--output-dir", str(tmp_path / "cut"), "--resume", "--no-progress"]
    assert main(argv) == 0
    resumed = _metrics(tmp_path / "cut")
    # Every metric, checkpoint_bytes included; only the run times differ.
    times = {"wall_time_s", "train_time_s"}
    assert {k: v for k, v in resumed.items() if k not in times} == {
        k: v for k, v in full.items() if k not in times
    }
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "cut"))
    assert all(torch.equal(a["guide"][k], v) for k, v in b["guide"].items())
    # Optimiser moments and schedules too: the next epoch would match as well.
    moments_a, moments_b = (c["optimizer"]["state"] for c in (a, b))
    assert moments_a.keys() == moments_b.keys()
    for i, state in moments_a.items():
        assert all(torch.equal(state[k], moments_b[i][k]) for k in state)
    assert (a["lr_scheduler"], a["subspace"]) == (b["lr_scheduler"], b["subspace"])


def test_existing_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--output-dir", str(out), *TINY]
    assert main(args) == 0
    before = _metrics(out)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err
    assert err.count("\n") == 1 and _metrics(out) == before
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(epochs=2, **TINY_CONFIG), out, progress=False, stop_after_epoch=1)
    assert (
        main(["train", "--output-dir", str(out), "--resume", "--density", "0.2"]) == 1
    )
    assert "--density 0.2 differs from the run's saved 0.1" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "new"), "--resume"]) == 1
    assert "no checkpoint.pt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg"], "--model must be one of"),
        (["--dataset", "imagenet"], "--dataset must be one of"),
        # Settings that library objects take carry those objects' messages.
        (["--removal", "snr_mean_abs"], "unknown removal criterion 'snr_mean_"),
        (["--density", "0"], "AutoSparseNormal: density must be in (0, 1], got"),
        (["--density", "-0.5"], "density must be in (0, 1], got -0.5; use e.g."),
        (["--density", "1.5"], "density must be in (0, 1], got 1.5; use e.g."),
        (["--density", "inf"], "density must be in (0, 1], got inf; use e.g."),
        (["--drop-fraction", "1"], "drop_fraction must be in [0, 1), got 1.0"),
        (["--kl-weight", "-1"], "scale_kl: weight must be finite and >= 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--dataset", "cifar10"], "cifar-10-batches-py"),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--output-dir", str(out), *TINY, *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-ssvi: error: ") and message in err
    assert err.count("\n") == 1
    if "cifar10" not in argv:  # a missing data set: a ValueError of app.data
        assert "PYRO_SSVI_DEBUG" not in err  # a settings error, not a bug report
    assert not (out / "metrics.json").exists()


def test_absurdly_small_density_keeps_one_weight_per_unit_and_says_so(tmp_path):
    """``--density 1e-6`` used to keep one weight per layer without a word of
    ours (and leak numpy's RuntimeWarning from the OOD plot); now each layer
    keeps one active weight per output unit, with a warning naming it."""
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--output-dir", str(out), *TINY]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, "--density", "1e-6"]) == 0
    shapes = {"net.1.weight": (400, 784), "net.3.weight": (400, 400)}
    shapes["net.5.weight"] = (10, 400)
    assert [str(w.message) for w in caught] == [
        f"AutoSparseNormal: density 1e-06 would keep {round(1e-6 * a * b)} of the "
        f"{a * b} coordinates of site {name!r}; it keeps k={a}, the floor (one per "
        "output unit of a weight, 1 for a vector: see "
        "pyro_ssvi.guides.active_floor)"
        for name, (a, b) in shapes.items()
    ]
    metrics = _metrics(out)
    assert metrics["num_active_weights"] == 400 + 400 + 10
    assert metrics["density"] == pytest.approx(810 / (784 * 400 + 400 * 400 + 4000))


def test_output_path_that_cannot_be_a_directory(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    assert main(["train", "--output-dir", str(blocker), *TINY]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(blocker / "run"), *TINY]) == 1
    assert "cannot create --output-dir" in capsys.readouterr().err


def test_divergence_stops_with_the_epoch_and_no_torn_files(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--output-dir", str(out), *TINY]
    assert main([*argv, "--optimizer", "sgd", "--lr", "1e20"]) == 1
    err = capsys.readouterr().err
    match = re.search(r"training diverged in epoch (\d+)", err)
    assert match and err.count("\n") == 1
    assert (out / "config.json").exists() and not (out / "metrics.json").exists()
    bad_epoch = int(match.group(1))
    if bad_epoch > 1:  # the checkpoint kept is the last one whose values were valid
        assert load_checkpoint(out / "checkpoint.pt")["epoch"] == bad_epoch - 1
    else:
        assert not (out / "checkpoint.pt").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(TrainingDiverged, match="there is no checkpoint"):
        config = TrainConfig(**{**TINY_CONFIG, "optimizer": "sgd", "lr": 1e20})
        train(config, tmp_path / "lib", progress=False)


def test_evaluate_reproduces_mean_weight_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    train(TrainConfig(epochs=1, **TINY_CONFIG), out, progress=False)
    saved = _metrics(out)
    capsys.readouterr()
    report = tmp_path / "eval.json"
    argv = ["evaluate", str(out / "checkpoint.pt"), "--num-samples", "2"]
    assert main([*argv, "--output", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["num_samples"] == 2
    assert 0 <= metrics["ood_auroc_mi"] <= 1
    for key in ("test_accuracy_mean_weights", "test_nll_mean_weights"):
        assert metrics[key] == pytest.approx(saved[key], abs=1e-6)
    printed = capsys.readouterr().out
    assert "test_accuracy:" in printed and "ood_auroc_mi:" in printed
    assert main(["evaluate", str(out), "--dataset", "cifar10"]) == 1
    assert "does not fit a model trained on mnist" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # load_run: the saved guide, ready for analysis.
    run, ckpt = load_run(out)
    saved_guide = load_checkpoint(ckpt)["guide"]
    for name, idx in run.guide.active_indices().items():
        assert torch.equal(idx, saved_guide[f"indices.{name}_unconstrained"].long())
    assert run.epoch == 1 and run.train_data is None


def test_compare_writes_a_side_by_side_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--densities", "0.1", "0.5", "--epochs", "1"]
    assert main([*argv, "--output-dir", str(out), *TINY]) == 0
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["variant"] for r in rows] == [
        "dense VI (AutoNormal)",
        "SSVI d=0.1",
        "SSVI d=0.5",
    ]
    assert [r["config"]["density"] for r in rows[1:]] == [0.1, 0.5]
    dense, d01, d05 = (r["num_variational_params"] for r in rows)
    assert d01 < d05 < dense and d01 / dense < 0.12
    table = (out / "comparison.md").read_text()
    assert table.count("\n") == 5 and "| SSVI d=0.1 | 0.10 |" in table
    assert "| OOD AUROC (entropy) | OOD AUROC (MI) |" in table
    assert (out / "density_tradeoff.png").exists()
    # As if interrupted in the last variant's final evaluation: without
    # --resume, it says which runs are finished and advises --resume (not
    # only --overwrite, which would train them all again), touching nothing.
    (out / "ssvi-d0.5" / "metrics.json").unlink()
    stamp = (out / "autonormal" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--output-dir", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"pyro-ssvi: error: --output-dir {out} already holds runs of this "
        "comparison (finished: autonormal, ssvi-d0.1; stopped with a checkpoint: "
        "ssvi-d0.5); pass --resume to keep the finished runs and continue the "
        "others, --overwrite to train every variant anew, or choose another "
        "directory\n"
    )
    assert not (out / "ssvi-d0.5" / "metrics.json").exists()
    # Finished variants are reused on --resume; the stopped one is finished.
    assert main([*argv, "--output-dir", str(out), "--resume", *TINY]) == 0
    assert (out / "autonormal" / "metrics.json").stat().st_mtime_ns == stamp
    assert (out / "ssvi-d0.5" / "metrics.json").is_file()
    assert main(["compare", "--densities", "0.1", "0", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-ssvi: error: AutoSparseNormal: density must be in")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_cifar_resnet18_end_to_end_on_tiny_cifar_files(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data" / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, 4)
        write_cifar_pickle(root / name, cifar_batch(images, labels, "labels", name))
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": 4}
    write_cifar_pickle(root / "batches.meta", meta)
    out = tmp_path / "run"
    argv = [
        "train", "--model", "resnet18", "--dataset", "cifar10",
        "--data-dir", str(tmp_path / "data"), "--ood-dataset", "none",
        "--epochs", "1", "--batch-size", "10", "--num-samples", "2",
        "--augment", "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    metrics = _metrics(out)
    assert metrics["num_weights"] == 11_164_352 and metrics["ood_auroc"] is None
    assert metrics["density"] == pytest.approx(0.1, abs=1e-4)


def test_lrt_flops_and_sparse_paths_in_the_report(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", "--output-dir", str(out), "--lrt", *TINY]
    assert main([*argv, "--sparse-compute", "on"]) == 0
    metrics = _metrics(out)
    assert set(metrics["lrt_paths"].values()) == {"sparse"}
    # MLP 784-400-400-10 at density 0.1: 10x fewer forward MACs, less the
    # dense-gradient growth overhead, paid every 3 steps here (spec section 8).
    assert metrics["train_flops_ratio_proportional"] == pytest.approx(10.0, rel=1e-3)
    assert 1.0 < metrics["train_flops_ratio"] < 10.0
    assert metrics["inference_flops_dense"] / metrics["inference_flops"] == (
        pytest.approx(10.0, rel=1e-3)
    )


def test_dense_baseline_honours_kl_weight_and_refuses_lrt(tmp_path, capsys):
    losses = []
    for weight in ("0", "1"):
        out = tmp_path / f"kl{weight}"
        argv = ["train", "--guide", "autonormal", "--epochs", "1", *TINY]
        assert main([*argv, "--kl-weight", weight, "--output-dir", str(out)]) == 0
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        losses.append(row["train_loss"])
    assert losses[0] < losses[1]  # the KL term is there only with weight 1
    assert main(["train", "--guide", "autonormal", "--lrt", *TINY]) == 1
    assert "--lrt needs --guide ssvi" in capsys.readouterr().err
