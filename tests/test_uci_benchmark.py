"""benchmarks/uci.py: one run end to end, the summary's arithmetic, the table."""

from __future__ import annotations

import json
import math

import benchmark_scripts
import pytest


@pytest.fixture(scope="module")
def uci():
    return benchmark_scripts.load("uci")


def test_smoke_run_writes_results(uci, tmp_path):
    argv = ["--smoke", "--datasets", "diabetes", "--methods", "dense", "ssvi-0.5"]
    assert uci.main(argv + ["--out", str(tmp_path)]) == 0
    raw = (tmp_path / "raw_smoke.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in raw]
    assert sorted((r["method"], r["split"]) for r in rows) == [
        ("dense", 0),
        ("dense", 1),
        ("ssvi-0.5", 0),
        ("ssvi-0.5", 1),
    ]
    assert all(math.isfinite(r["rmse"]) and r["rmse"] > 0 for r in rows)
    # SSVI at density 0.5 keeps half of each weight matrix: 10x50 and 50x1
    # weights, plus 50 + 1 dense biases, a loc and a scale each (and no noise:
    # it belongs to the model)
    ssvi = next(r for r in rows if r["method"] == "ssvi-0.5")
    assert ssvi["num_variational_params"] == 2 * (250 + 25 + 51)
    summary = json.loads((tmp_path / "results_smoke.json").read_text())
    assert [e["method"] for e in summary["table"]] == ["dense", "ssvi-0.5"]
    # a rerun finds every run done and only rewrites the summary
    assert uci.main(argv + ["--out", str(tmp_path)]) == 0
    assert len((tmp_path / "raw_smoke.jsonl").read_text().splitlines()) == 4


def test_summary_is_mean_and_standard_error(uci):
    rows = [
        {"dataset": "boston", "method": "dense", "split": s, "rmse": v}
        for s, v in enumerate([1.0, 2.0, 3.0])
    ]
    for row in rows:
        row.update({k: 0.0 for k in uci.KEYS[1:] + ("noise_std", "wall_s")})
        row["num_variational_params"] = 7
    (entry,) = uci.summarise(rows, ["boston"], ["dense"])
    # mean 2, sample variance 1, standard error sqrt(1 / 3)
    assert entry["rmse"] == pytest.approx((2.0, math.sqrt(1 / 3)))
    table = uci.markdown([entry], {"epochs": 40})
    assert (
        "| boston | VI (Graves 2011), published | 20 | 4.32 ± 0.29 | -2.90 ± 0.07"
        in table
    )
    assert "| boston | dense VI (AutoNormal) | 3 | 2.00 ± 0.58 |" in table


def test_bad_method_is_one_clear_error(uci, capsys):
    with pytest.raises(SystemExit):
        uci.parse_args(["--methods", "ssvi-2"])
    assert "neither 'dense' nor 'ssvi-<density>'" in capsys.readouterr().err
