"""SparseSVI: schedule, invariants, optimiser state, exactness, real-data accuracy."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from common import (
    LinearRegression,
    classification_data,
    exact_posterior,
    tiny_classifier,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_ssvi import CRITERIA, AutoSparseNormal, SparseSVI
from pyro_ssvi._pyro_compat import pyro_optim_optimizers
from pyro_ssvi.criteria import removal_scores
from pyro_ssvi.poutine import scale_kl

X, Y = classification_data()


def _adam(lr=0.01):
    return pyro.optim.Adam({"lr": lr})


def _svi(density=0.3, optim=None, **kwargs):
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=density)
    kwargs.setdefault("num_steps", 100)
    svi = SparseSVI(model, guide, optim or _adam(), **kwargs)
    return model, guide, svi


def _num_guide_params(guide):
    """One torch optimiser per guide parameter (loc, scale, indices): none leaked."""
    return len(list(guide.parameters()))


def _state(svi, guide, name):
    """Optimiser state tensors of a sparse site's (loc, scale) parameters."""
    out = []
    for p in guide.unconstrained_params(name):
        opt = pyro_optim_optimizers(svi.optim)[p]
        opt = getattr(opt, "optimizer", opt)
        state = opt.state[p].items()
        out.append(
            {k: v.clone() for k, v in state if torch.is_tensor(v) and v.dim() == 1}
        )
    return out


# ----------------------------------------------------------------- schedule
def test_step_returns_float_and_updates_follow_schedule():
    _, guide, svi = _svi(update_every=3, stop_updates_at=10)
    losses = [svi.step(X, Y) for _ in range(12)]
    assert all(isinstance(v, float) for v in losses)
    assert [u.step for u in svi.updates] == [3, 6, 9]
    assert svi.num_updates == 3
    assert isinstance(svi.evaluate_loss(X, Y), float)


def test_cosine_drop_fraction_and_drop_counts():
    _, guide, svi = _svi(update_every=5, num_steps=40, drop_fraction=0.3)
    assert svi.stop_updates_at == 30
    for _ in range(30):
        svi.step(X, Y)
    k = guide.num_active()
    for u in svi.updates:
        r = 0.15 * (1 + math.cos(math.pi * u.step / 30))
        assert u.drop_fraction == pytest.approx(r)
        assert u.num_dropped == {n: math.floor(r * k[n]) for n in k}
        assert all(0 <= u.num_swapped[n] <= u.num_dropped[n] for n in k)


# --------------------------------------------------------------- invariants
# Low densities on these tiny layers keep the floor, and warn that they do.
@pytest.mark.filterwarnings("ignore:AutoSparseNormal. density .* would keep")
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    hidden=st.integers(1, 9),
    density=st.floats(0.05, 1.0),
    update_every=st.integers(1, 3),
    removal=st.sampled_from(sorted(CRITERIA)),
    addition=st.sampled_from(["grad", "random"]),
    seed=st.integers(0, 2**16),
)
def test_invariants_hold_after_every_update(
    hidden, density, update_every, removal, addition, seed
):
    from pyro_ssvi.guides import active_floor

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = tiny_classifier(hidden=hidden)
    guide = AutoSparseNormal(model, density=density)
    svi = SparseSVI(
        model,
        guide,
        _adam(),
        update_every=update_every,
        removal=removal,
        addition=addition,
        drop_fraction=0.5,
        drop_schedule="constant",
    )
    svi.step(X, Y)
    k0 = guide.num_active()
    params0 = {n: guide.unconstrained_params(n) for n in k0}
    for _ in range(6):
        before = guide.active_indices()
        svi.step(X, Y)
        after = guide.active_indices()
        for name, idx in after.items():
            numel = guide.site_shape(name).numel()
            shape = guide.site_shape(name)  # at least one per output unit
            k = max(active_floor(shape), round(density * numel))
            assert idx.numel() == k0[name] == k
            assert torch.all(idx[1:] > idx[:-1]) and 0 <= idx[0] and idx[-1] < numel
            value = guide(X, Y)[name].reshape(-1)
            off = torch.ones(numel, dtype=torch.bool)
            off[idx] = False
            assert torch.all(value[off] == 0)
            assert torch.all(guide.median()[name].reshape(-1)[off] == 0)
            # Parameters are edited in place, never re-created.
            assert all(
                a is b for a, b in zip(guide.unconstrained_params(name), params0[name])
            )
            new = ~torch.isin(idx, before[name])
            for state in _state(svi, guide, name):
                for value in state.values():
                    assert torch.all(value[new] == 0)
    assert len(pyro_optim_optimizers(svi.optim)) == _num_guide_params(guide)


def test_gradients_have_only_active_coordinates():
    model, guide, svi = _svi()
    guide.setup(X, Y)
    TraceMeanField_ELBO().loss_and_grads(model, guide, X, Y)
    for name, k in guide.num_active().items():
        for p in guide.unconstrained_params(name):
            assert p.grad.shape == (k,)


# -------------------------------------------------------- optimiser state
def _removal_then_readd(svi, guide, name):
    """Force a known swap: the lowest-|loc| coordinate is re-added at once."""
    loc, _ = guide.unconstrained_params(name)
    idx = guide.active_indices()[name]
    scores = removal_scores("mean_abs", loc.detach(), torch.ones_like(loc))
    order = scores.argsort()
    readded, dropped = int(idx[order[0]]), int(idx[order[1]])
    numel = guide.site_shape(name).numel()
    inactive = [j for j in range(numel) if j not in set(idx.tolist())]
    fresh = inactive[0]

    def addition(site, post):
        s = torch.zeros(post.event_shape.numel(), dtype=torch.float64)
        if site == name:
            s[readded], s[fresh] = 2.0, 1.0
        return s

    svi.subspace.addition = addition
    svi.subspace.removal = CRITERIA["mean_abs"]
    return readded, dropped, fresh


@pytest.mark.parametrize(
    "optim",
    [
        lambda: pyro.optim.Adam({"lr": 0.01}),
        lambda: pyro.optim.ClippedAdam({"lr": 0.01}),
        lambda: pyro.optim.SGD({"lr": 0.01, "momentum": 0.9}),
        lambda: pyro.optim.ExponentialLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.9}
        ),
    ],
    ids=["adam", "clipped_adam", "sgd_momentum", "lr_scheduler"],
)
def test_swap_moves_values_and_moments_and_resets_new_ones(optim):
    name = "net.0.weight"
    _, guide, svi = _svi(
        0.5, optim=optim(), drop_fraction=0.1, drop_schedule="constant"
    )
    for _ in range(3):
        svi.step(X, Y)
    readded, dropped, fresh = _removal_then_readd(svi, guide, name)
    idx0 = guide.active_indices()[name]
    loc, scale = (p.detach().clone() for p in guide.unconstrained_params(name))
    states0 = _state(svi, guide, name)
    k = idx0.numel()
    record = svi.update_subspace(X, Y)
    idx1 = guide.active_indices()[name]
    assert record.num_dropped[name] == math.floor(0.1 * k) == 2
    assert record.num_swapped[name] == 1
    assert readded in idx1.tolist() and fresh in idx1.tolist()
    assert dropped not in idx1.tolist()
    loc1, scale1 = (p.detach() for p in guide.unconstrained_params(name))
    kept = [j for j in idx0.tolist() if j != dropped]
    # New scales start at the mean over the coordinates that stay (kept and
    # re-added), as in the reference implementation.
    kept_scale = scale[[idx0.tolist().index(j) for j in kept]]
    for j in idx1.tolist():
        new_pos = idx1.tolist().index(j)
        if j == fresh:
            assert loc1[new_pos] == 0
            assert scale1[new_pos] == pytest.approx(kept_scale.mean().item())
            for state in _state(svi, guide, name):
                assert all(v[new_pos] == 0 for v in state.values())
            continue
        old_pos = idx0.tolist().index(j)
        assert loc1[new_pos] == loc[old_pos] and scale1[new_pos] == scale[old_pos]
        for before, after in zip(states0, _state(svi, guide, name)):
            for key in before:
                assert after[key][new_pos] == before[key][old_pos]
    # Training goes on with the same optimiser objects.
    svi.step(X, Y)
    assert len(pyro_optim_optimizers(svi.optim)) == _num_guide_params(guide)


# -------------------------------------------------------------- exactness
def _fit_regression(model, guide, x, y, steps, **svi_kwargs):
    optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / steps)})
    svi = SparseSVI(model, guide, optim, num_steps=steps, **svi_kwargs)
    locs, scales = [], []
    for step in range(steps):
        svi.step(x, y)
        if step >= steps - 500:  # Polyak-average the last iterates
            post = guide.site_posterior("w")
            locs.append(post.loc.detach().clone())
            scales.append(post.scale.detach().clone())
    return torch.stack(locs).mean(0), torch.stack(scales).mean(0)


def _regression_data(d=4, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    return x, x @ w + 0.5 * torch.randn(n, generator=g)


def test_full_density_converges_to_exact_posterior():
    x, y = _regression_data()
    model = LinearRegression(4, prior_scale=1.0, noise=0.5)
    guide = AutoSparseNormal(model, density=1.0, init_scale=0.1)
    loc, scale = _fit_regression(model, guide, x, y, 3000, update_every=100)
    mean, std = exact_posterior(x, y, 0.5, 1.0)
    assert torch.allclose(loc, mean, atol=0.02)
    assert torch.allclose(scale, std, atol=0.01)


def test_fixed_active_set_converges_to_restricted_posterior():
    x, y = _regression_data(d=6)
    model = LinearRegression(6, prior_scale=1.0, noise=0.5)
    guide = AutoSparseNormal(model, density=0.5, init_scale=0.1)
    loc, scale = _fit_regression(model, guide, x, y, 3000, drop_fraction=0.0)
    active = guide.active_indices()["w"]
    mean, std = exact_posterior(x, y, 0.5, 1.0, active=active)
    assert torch.allclose(loc, mean, atol=0.02)
    assert torch.allclose(scale, std, atol=0.01)


def test_gradient_addition_finds_the_informative_feature():
    signal = 7
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g)
    y = 3.0 * x[:, signal] + 0.1 * torch.randn(200, generator=g)
    for seed in range(20):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        model = LinearRegression(10, noise=0.5)
        guide = AutoSparseNormal(model, density=0.2).setup(x, y)
        if signal not in guide.active_indices()["w"]:
            break
    svi = SparseSVI(model, guide, _adam(), drop_fraction=0.5, num_steps=100)
    svi.update_subspace(x, y)
    assert signal in guide.active_indices()["w"].tolist()


def test_same_seed_gives_identical_runs():
    def run():
        pyro.clear_param_store()
        pyro.set_rng_seed(123)
        _, guide, svi = _svi(update_every=2, num_steps=20)
        losses = [svi.step(X, Y) for _ in range(20)]
        return losses, guide.active_indices()

    (l1, a1), (l2, a2) = run(), run()
    assert l1 == l2
    assert all(torch.equal(a1[k], a2[k]) for k in a1)


@pytest.mark.slow
def test_sparse_mlp_on_digits_is_close_to_dense_vi():
    from pyro_ssvi.app.data import load_digits_split
    from pyro_ssvi.app.models import BayesianClassifier, mlp
    from pyro_ssvi.app.predict import predict_proba

    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    steps = 1500

    def train(sparse):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = BayesianClassifier(mlp(64, [128], 10), num_data=len(x_train))
        if sparse:
            guide = AutoSparseNormal(model, density=0.1)
            svi = SparseSVI(model, guide, _adam(), num_steps=steps, update_every=50)
        else:
            guide = AutoNormal(model, init_loc_fn=model.init_loc_fn(), init_scale=0.01)
            svi = SVI(model, guide, _adam(), TraceMeanField_ELBO())
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            batch = torch.randint(0, len(x_train), (128,), generator=g)
            svi.step(x_train[batch], y_train[batch])
        probs = predict_proba(model, guide, x_test, num_samples=10)
        return (probs.argmax(-1) == y_test).float().mean().item()

    dense, sparse = train(False), train(True)
    assert dense > 0.9
    assert sparse > dense - 0.05


# ----------------------------------------------------------- reliability
@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro warns, then we raise
def test_nan_loss_raises_with_step_number_and_changes_nothing():
    _, guide, svi = _svi(update_every=1)
    svi.step(X, Y)
    before = guide.active_indices()
    params = [p.detach().clone() for p in guide.parameters()]
    bad = X.clone()
    bad[0, 0] = float("nan")
    for validate in (True, False):  # Pyro's validation sees the NaN first
        pyro.enable_validation(validate)
        with pytest.raises(FloatingPointError, match="at step 2"):
            svi.step(bad, Y)
    assert svi.step_count == 1
    assert all(torch.equal(before[k], v) for k, v in guide.active_indices().items())
    assert all(torch.equal(a, b) for a, b in zip(params, guide.parameters()))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(update_every=0), ValueError, "update_every must be >= 1"),
        (dict(update_every=2.5), TypeError, "update_every must be an int"),
        (dict(drop_fraction=1.0), ValueError, r"drop_fraction must be in \[0, 1\)"),
        (dict(drop_fraction=-0.1), ValueError, r"drop_fraction must be in \[0, 1\)"),
        (dict(removal="snr_mean_abs"), ValueError, "unknown removal criterion"),
        (dict(addition="magnitude"), ValueError, "unknown addition"),
        (dict(drop_schedule="step"), ValueError, "Unknown drop_schedule"),
        (dict(num_steps=None, drop_schedule="cosine"), ValueError, "pass num_steps"),
        (dict(num_steps=None, drop_schedule="linear"), ValueError, "'inverse'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _svi(**kwargs)


def test_non_sparse_guide_and_trace_elbo():
    model = tiny_classifier()
    with pytest.raises(TypeError, match="needs an AutoSparseNormal"):
        SparseSVI(model, AutoNormal(model), _adam(), num_steps=10)
    # Trace_ELBO scores the inactive zeros under the prior, as the registered
    # KL now does too: a valid choice, no warning (filterwarnings = error).
    svi = SparseSVI(model, AutoSparseNormal(model, density=0.3), _adam(), Trace_ELBO())
    assert isinstance(svi.step(X, Y), float)


def test_update_subspace_needs_a_batch_for_gradient_addition():
    _, _, svi = _svi()
    with pytest.raises(ValueError, match="needs a minibatch"):
        svi.update_subspace()


def test_state_dict_roundtrip():
    _, _, svi = _svi(update_every=2, num_steps=20)
    for _ in range(5):
        svi.step(X, Y)
    state = svi.state_dict()
    _, _, other = _svi(update_every=2, num_steps=20)
    other.load_state_dict(state)
    assert other.step_count == 5 and other.updates == svi.updates
    with pytest.raises(ValueError, match="expects keys"):
        other.load_state_dict({"step": 1})


# ---------------------------------------------------------------- KL weight
def _exact_kl(guide):
    """Closed-form KL term of every site against the models' Normal(0, 1) priors.

    For a sparse site: the KL of the active coordinates minus the prior's
    log-density at the n - k inactive zeros, -log N(0; 0, 1) = log(2 pi) / 2 each.
    """
    total = 0.0
    for name in guide.site_names():
        post = guide.site_posterior(name)
        loc, scale = (t.detach() for t in guide._get_loc_and_scale(name))
        q, p = torch.distributions.Normal(loc, scale), torch.distributions.Normal(0, 1)
        total += torch.distributions.kl_divergence(q, p).sum().item()
        if name in guide.sparse_site_names():
            inactive = post.event_shape.numel() - loc.numel()
            total += inactive * 0.5 * math.log(2 * math.pi)
    return total


def test_kl_weight_scales_exactly_the_kl_term():
    _, guide, svi = _svi(kl_weight=0.25)
    guide.setup(X, Y)
    pyro.set_rng_seed(7)
    weighted = svi.evaluate_loss(X, Y)
    svi.kl_weight = 1.0
    pyro.set_rng_seed(7)
    unweighted = svi.evaluate_loss(X, Y)
    # Same noise draws, so the likelihood terms cancel: the difference is 0.75 KL.
    assert unweighted - weighted == pytest.approx(0.75 * _exact_kl(guide), rel=1e-4)


def test_kl_weight_callable_receives_the_step():
    seen = []

    def weight(step):
        seen.append(step)
        return min(1.0, step / 4)

    _, _, svi = _svi(kl_weight=weight)
    for _ in range(3):
        svi.step(X, Y)
    assert seen == [1, 2, 3]
    assert svi.current_kl_weight() == 1.0  # step 4
    with pytest.raises(ValueError, match="kl_weight must be finite and >= 0"):
        _svi(kl_weight=-1.0)


def test_trains_with_module_local_params():
    pyro.settings.set(module_local_params=True)
    _, guide, svi = _svi(update_every=5, num_steps=60)
    before = [p.detach().clone() for p in guide.parameters()]
    losses = [svi.step(X, Y) for _ in range(60)]
    assert len(pyro.get_param_store()) == 0
    assert all(not torch.equal(a, b) for a, b in zip(before, guide.parameters()))
    assert sum(losses[-10:]) < sum(losses[:10]) and svi.num_updates == 8  # stop: 45


def test_module_local_params_train_deterministic_batch_norm_too():
    from torch import nn

    from pyro_ssvi.app.models import BayesianClassifier

    pyro.settings.set(module_local_params=True)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model = BayesianClassifier(net, num_data=len(X))
    guide = AutoSparseNormal(model, density=0.5)
    svi = SparseSVI(model, guide, _adam(0.1), num_steps=100)
    bn = model.net[1].weight.detach().clone()
    for _ in range(5):
        svi.step(X, Y)
    assert not torch.equal(bn, model.net[1].weight.detach())
    assert len(pyro_optim_optimizers(svi.optim)) == len(list(guide.parameters())) + 2


def test_sparse_compute_defaults_to_auto_on_the_cpu_only():
    from pyro_ssvi.poutine import SparseWeightSamplingMessenger

    _, _, svi = _svi()
    handler = svi.lazy_weights
    assert isinstance(handler, SparseWeightSamplingMessenger)
    assert handler.sparse == "auto" and handler.devices == ("cpu",)
    assert handler.covers(torch.device("cpu"))
    assert not handler.covers(torch.device("meta"))  # GPUs: ordinary sampling
    for _ in range(3):
        svi.step(X, Y)
    assert set(handler.decisions) == {"net.0.weight", "net.2.weight"}  # timed
    assert _svi(sparse_compute=False)[2].lazy_weights is None


def test_regrow_scale_sets_the_scale_of_new_coordinates():
    name = "net.0.weight"
    _, guide, svi = _svi(
        0.5, drop_fraction=0.5, drop_schedule="constant", regrow_scale=0.123
    )
    for _ in range(3):
        svi.step(X, Y)
    before = guide.active_indices()[name]
    svi.update_subspace(X, Y)
    after = guide.active_indices()[name]
    new = ~torch.isin(after, before)
    assert new.any()
    scale = guide.site_posterior(name).scale
    assert torch.allclose(scale[new], torch.full_like(scale[new], 0.123), rtol=1e-5)
    with pytest.raises(ValueError, match="regrow_scale"):
        _svi(regrow_scale=0.0)


def test_growth_score_with_the_kl_gradient_is_the_references():
    """likelihood_gradients(kl_weight=w) adds w * dKL/dmu = w * mu / s0^2 (prior
    N(0, 1)) at the active coordinates and nothing elsewhere."""
    from pyro_ssvi.reselection import likelihood_gradients

    model, guide, _ = _svi(0.5)
    guide.setup(X, Y)
    pyro.set_rng_seed(3)
    plain = likelihood_gradients(model, guide, X, Y)
    pyro.set_rng_seed(3)
    with_kl = likelihood_gradients(model, guide, X, Y, kl_weight=0.25)
    for name in guide.sparse_site_names():
        post = guide.site_posterior(name)
        expected = plain[name] + 0.25 * post.scatter(post.loc.detach())
        assert torch.allclose(with_kl[name], expected, atol=1e-6)
    # Scaled as the KL term enters the ELBO: poutine.scale and scale_kl count.
    scaled = [scale_kl(poutine.scale(f, scale=0.1), 0.2) for f in (model, guide)]
    pyro.set_rng_seed(3)
    with_kl_scaled = likelihood_gradients(*scaled, X, Y, kl_weight=0.25)
    for name in guide.sparse_site_names():
        post = guide.site_posterior(name)
        expected = 0.1 * plain[name] + 0.02 * 0.25 * post.scatter(post.loc.detach())
        assert torch.allclose(with_kl_scaled[name], expected, atol=1e-6)
    _, _, svi = _svi(growth_includes_kl=True, kl_weight=0.5)
    assert svi.subspace.growth_kl_weight() == 0.5


def test_a_guide_without_an_autosparsenormal_is_named_in_the_error():
    """The error names what the guide is and what it needs (it said only
    "got method" for a bound method)."""
    model = tiny_classifier()

    class Holder:
        def guide(self, x, y):
            return None

    for guide, what in [
        (AutoNormal(model), "the AutoNormal given"),
        (
            Holder().guide,
            "the method 'test_a_guide_without_an_autosparsenormal_is_"
            "named_in_the_error.<locals>.Holder.guide' given",
        ),
    ]:
        with pytest.raises(TypeError) as error:
            SparseSVI(model, guide, _adam())
        message = str(error.value)
        assert "needs an AutoSparseNormal inside" in message and what in message
