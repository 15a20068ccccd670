"""Tests for pyro_ssvi.app.predict with real Pyro, real models and AutoSparseNormal."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from torch.utils.data import DataLoader, TensorDataset

from pyro_ssvi import AutoSparseNormal
from pyro_ssvi.app.metrics import classification_metrics, predictive_entropy
from pyro_ssvi.app.models import BayesianClassifier, mlp
from pyro_ssvi.app.predict import Prediction, evaluate, predict, predict_proba

N, D, C = 12, 4, 3


def _data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, C, (n,), generator=g)


def _setup(
    init_scale: float = 0.3, hidden: tuple[int, ...] = (5,), classes: int = C
) -> tuple[BayesianClassifier, AutoSparseNormal, torch.Tensor, torch.Tensor]:
    x, y = _data()
    y = y % classes
    model = BayesianClassifier(mlp(D, list(hidden), classes, flatten=False), N)
    guide = AutoSparseNormal(model, density=0.5, init_scale=init_scale)
    guide.setup(x, y)
    return model, guide, x, y


def _by_hand_mc(model, guide, x, num_samples):
    """The Monte Carlo loop written out: trace the guide, replay the model."""
    total_p, total_h = torch.zeros(len(x), C), torch.zeros(len(x))
    with torch.no_grad():
        for _ in range(num_samples):
            guide_trace = poutine.trace(guide).get_trace(x)
            probs = torch.softmax(poutine.replay(model, trace=guide_trace)(x), -1)
            total_p += probs
            total_h += predictive_entropy(probs)
    return total_p / num_samples, total_h / num_samples


# ------------------------------------------------------------- exact algebra
def test_mean_weights_is_softmax_of_model_at_median():
    model, guide, x, _ = _setup()
    pred = predict(model, guide, x, mean_weights=True)
    with torch.no_grad():
        logits = poutine.condition(model, data=guide.median())(x)
    expected = torch.softmax(logits, -1)
    assert isinstance(pred, Prediction) and pred.labels is None
    assert torch.equal(pred.probs, expected)
    assert torch.equal(pred.mean_entropy, predictive_entropy(expected))


def test_mc_equals_hand_written_loop_with_same_seed():
    model, guide, x, _ = _setup()
    pyro.set_rng_seed(1)
    pred = predict(model, guide, x, num_samples=4, batch_size=5)
    pyro.set_rng_seed(1)
    parts = [_by_hand_mc(model, guide, x[i : i + 5], 4) for i in range(0, N, 5)]
    assert torch.equal(pred.probs, torch.cat([p for p, _ in parts]))
    assert torch.equal(pred.mean_entropy, torch.cat([h for _, h in parts]))


def test_mc_with_tiny_scales_equals_mean_weights():
    model, guide, x, _ = _setup(init_scale=1e-7)
    mc = predict(model, guide, x, num_samples=3)
    mean = predict(model, guide, x, mean_weights=True)
    torch.testing.assert_close(mc.probs, mean.probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(mc.mean_entropy, mean.mean_entropy, atol=1e-5, rtol=0)


def test_mc_draws_differ_and_average():
    model, guide, x, _ = _setup(init_scale=0.5)
    one = predict(model, guide, x, num_samples=1)
    many = predict(model, guide, x, num_samples=8)
    assert not torch.allclose(one.probs, many.probs)
    torch.testing.assert_close(many.probs.sum(-1), torch.ones(N))
    # Jensen: the entropy of the mean is at least the mean entropy.
    assert (predictive_entropy(many.probs) >= many.mean_entropy - 1e-6).all()


@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_batch_size_does_not_change_mean_weight_prediction(batch_size):
    model, guide, x, _ = _setup()
    reference = predict(model, guide, x, mean_weights=True, batch_size=N)
    pred = predict(model, guide, x, mean_weights=True, batch_size=batch_size)
    torch.testing.assert_close(pred.probs, reference.probs)
    torch.testing.assert_close(pred.mean_entropy, reference.mean_entropy)


# -------------------------------------------------------- Monte Carlo accuracy
def _gauss_expectation(fn, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``E[fn(z)]`` for ``z ~ N(mean, var)`` by 100-point Gauss-Hermite (exact
    to ~1e-12 for these smooth bounded integrands)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(100)
    z = mean[:, None] + np.sqrt(var)[:, None] * nodes[None, :]
    return (fn(z) * weights).sum(-1) / math.sqrt(2 * math.pi)


def test_mc_estimate_within_five_standard_errors():
    # A linear binary classifier: the logit difference z = (w1 - w0) . x +
    # (b1 - b0) is Gaussian under the mean-field guide, with inactive weights
    # exactly 0. So p1 = E[sigmoid(z)] and the mean entropy E[h(sigmoid(z))]
    # are known by quadrature, and so are their standard deviations; the
    # estimate from S draws must lie within 5 * std / sqrt(S) of the truth.
    model, guide, x, _ = _setup(init_scale=0.8, hidden=(), classes=2)
    num_samples = 400
    pred = predict(model, guide, x, num_samples=num_samples)

    w, b = guide.site_posterior("net.0.weight"), guide.site_posterior("net.0.bias")
    xd = x.double()
    mean = (xd @ (w.mean[1] - w.mean[0]).double()) + (b.mean[1] - b.mean[0]).double()
    var = (xd**2 @ (w.variance[0] + w.variance[1]).double()) + b.variance.sum()
    mean, var = mean.detach().numpy(), var.detach().double().numpy()

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    def entropy(z):  # -p log p - (1 - p) log(1 - p) with stable logs
        p = sigmoid(z)
        return p * np.logaddexp(0, -z) + (1 - p) * np.logaddexp(0, z)

    for fn, estimate in ((sigmoid, pred.probs[:, 1]), (entropy, pred.mean_entropy)):
        truth = _gauss_expectation(fn, mean, var)
        std = np.sqrt(_gauss_expectation(lambda z: fn(z) ** 2, mean, var) - truth**2)
        tolerance = 5 * std / math.sqrt(num_samples)
        assert (np.abs(estimate.double().numpy() - truth) <= tolerance).all()
        assert (std > 1e-3).all()  # the test is not vacuous


# ----------------------------------------------------------------- data forms
def test_accepts_tensor_pair_dataset_loader_and_iterables():
    model, guide, x, y = _setup()
    reference = predict(model, guide, x, mean_weights=True)
    dataset = TensorDataset(x, y)
    labelled = [
        (x, y),
        dataset,
        DataLoader(dataset, batch_size=5),
        [(x[:7], y[:7]), (x[7:], y[7:])],
    ]
    for data in labelled:
        pred = predict(model, guide, data, mean_weights=True, batch_size=4)
        torch.testing.assert_close(pred.probs, reference.probs)
        assert torch.equal(pred.labels, y)
    unlabelled = [[x[:3], x[3:]], DataLoader(TensorDataset(x), batch_size=5)]
    for data in unlabelled:
        pred = predict(model, guide, data, mean_weights=True)
        torch.testing.assert_close(pred.probs, reference.probs)
        assert pred.labels is None


def test_predict_proba_is_predict_probs():
    model, guide, x, _ = _setup()
    pyro.set_rng_seed(3)
    probs = predict_proba(model, guide, x, num_samples=2)
    pyro.set_rng_seed(3)
    assert torch.equal(probs, predict(model, guide, x, num_samples=2).probs)


def test_runs_in_eval_mode_without_grad_and_restores_modes():
    model, guide, x, _ = _setup()
    model.train()
    model.net[1].eval()  # a mixed state must be restored exactly
    pred = predict(model, guide, x, num_samples=2, device="cpu")
    assert not pred.probs.requires_grad and pred.probs.device.type == "cpu"
    assert model.training and model.net[0].training and not model.net[1].training


# ------------------------------------------------------------------ evaluate
def test_evaluate_equals_metrics_of_predictions():
    model, guide, x, y = _setup()
    x_ood = _data(seed=1)[0] * 5
    result = evaluate(model, guide, (x, y), ood_data=x_ood, mean_weights=True)
    pred = predict(model, guide, x, mean_weights=True)
    ood = predict(model, guide, x_ood, mean_weights=True)
    expected = classification_metrics(
        pred.probs, y, pred.mean_entropy, probs_ood=ood.probs
    )
    assert result == expected
    assert {"ood_auroc", "ood_aupr_maxprob", "mutual_information"} <= set(result)
    assert result["mutual_information"] == 0.0  # one deterministic pass


def test_evaluate_monte_carlo_with_loader():
    model, guide, x, y = _setup()
    pyro.set_rng_seed(2)
    result = evaluate(model, guide, DataLoader(TensorDataset(x, y), batch_size=6))
    pyro.set_rng_seed(2)
    pred = predict(model, guide, DataLoader(TensorDataset(x, y), batch_size=6))
    assert result == classification_metrics(pred.probs, y, pred.mean_entropy)
    assert result["mutual_information"] > 0 and "ood_auroc" not in result


# ----------------------------------------------------------- lazy guides
def test_guide_must_be_set_up_and_loaded_guides_work_after_setup():
    model, guide, x, y = _setup()
    state = guide.state_dict()
    pyro.clear_param_store()
    fresh = AutoSparseNormal(model, density=0.5)
    with pytest.raises(ValueError, match=r"guide.setup\(x, y\)"):
        predict(model, fresh, x)
    with pytest.raises(RuntimeError, match="setup"):
        predict(model, fresh, x, mean_weights=True)
    fresh.load_state_dict(state)
    # A loaded guide is checked against the model on its first use; that
    # needs no labels, so prediction from the inputs alone works.
    loaded = predict(model, fresh, x, mean_weights=True)
    expected = predict(model, guide, x, mean_weights=True)
    torch.testing.assert_close(loaded.probs, expected.probs)
    assert predict(model, fresh, x, num_samples=2).probs.shape == (N, C)


def test_plain_function_guide_for_monte_carlo_only():
    model, guide, x, _ = _setup()

    def function_guide(inputs):
        return guide(inputs)

    pyro.set_rng_seed(4)
    pred = predict(model, function_guide, x, num_samples=3)
    pyro.set_rng_seed(4)
    assert torch.equal(pred.probs, predict(model, guide, x, num_samples=3).probs)
    with pytest.raises(TypeError, match="median"):
        predict(model, function_guide, x, mean_weights=True)


def test_float64_model_gives_float64_probabilities(float64):
    model, guide, x, _ = _setup()
    pred = predict(model, guide, x.double(), num_samples=2)
    assert pred.probs.dtype == pred.mean_entropy.dtype == torch.float64


# ---------------------------------------------------------------- validation
def test_invalid_arguments():
    model, guide, x, y = _setup()
    with pytest.raises(ValueError, match="num_samples"):
        predict(model, guide, x, num_samples=0)
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, guide, x, batch_size=0)
    with pytest.raises(TypeError, match="data must be"):
        predict(model, guide, 3)
    with pytest.raises(ValueError, match="batch 0 .* length 3"):
        predict(model, guide, [(x, y, y)], mean_weights=True)
    with pytest.raises(ValueError, match="batch 1 of data has no labels"):
        predict(model, guide, [(x, y), x], mean_weights=True)
    with pytest.raises(ValueError, match="empty"):
        predict(model, guide, [], mean_weights=True)
    with pytest.raises(ValueError, match="different lengths"):
        predict(model, guide, (x, y[:3]), mean_weights=True)
    with pytest.raises(ValueError, match="labelled data"):
        evaluate(model, guide, x, mean_weights=True)


def test_model_must_return_logits():
    model, guide, x, _ = _setup()

    def first_logit(inputs):
        return model(inputs)[:, 0]

    with pytest.raises(ValueError, match="must return logits of shape"):
        predict(first_logit, guide, x, mean_weights=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_guide_device():
    model, guide, x, y = _setup()
    expected = predict(model, guide, x, mean_weights=True)
    model.to("cuda")
    guide.to("cuda")
    pred = predict(model, guide, (x, y), mean_weights=True)  # inputs on the CPU
    assert pred.probs.device.type == "cpu"
    torch.testing.assert_close(pred.probs, expected.probs, atol=1e-5, rtol=1e-4)
    assert predict(model, guide, x, num_samples=3).probs.shape == (N, C)
