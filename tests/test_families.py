"""SSVI's posterior families (issue 20): budget allocation and a background variance.

Exact answers: a hand-computed ERK allocation, the background's layer
variance and KL against dense reference computations, SSVI's outputs
reproduced bit for bit at ``s = 0``, and the direct step equal to Pyro's
traced ELBOs (same random numbers, float rounding only).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from common import classification_data, tiny_classifier
from test_step import ELBOS, HANDLERS, _assert_same, _case, _grads

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi._step import direct_step
from pyro_ssvi.app.predict import Prediction
from pyro_ssvi.background import (
    BackgroundSparseNormal,
    background_kl,
    conv_background_variance,
    linear_background_variance,
)
from pyro_ssvi.distributions import SparseNormal
from pyro_ssvi.elbo import TraceSparseMeanField_ELBO
from pyro_ssvi.initialization import allocate_densities
from pyro_ssvi.poutine import local_reparameterization, sparse_weight_sampling

MLP = {
    "fc1": torch.Size([400, 784]),
    "fc2": torch.Size([400, 400]),
    "fc3": torch.Size([10, 400]),
}


# ------------------------------------------------------------------ allocation
def test_erk_allocation_by_hand():
    # Budget 0.1 * 477,600 = 47,760. ERK raw densities (in + out) / (in out):
    # fc3's 410/4000 * 47760/2394 > 1, so it is capped (4,000 coordinates);
    # the other two share 43,760 over raw weights 1184 and 800 coordinates.
    got = allocate_densities(MLP, 0.1, "erk")
    eps = 43_760 / (1184 + 800)
    assert got["fc3"] == 1.0
    assert got["fc1"] == pytest.approx(eps * 1184 / 313_600, rel=1e-12)
    assert got["fc2"] == pytest.approx(eps * 800 / 160_000, rel=1e-12)
    total = sum(got[n] * MLP[n].numel() for n in MLP)
    assert total == pytest.approx(47_760, rel=1e-12)


def test_uniform_allocation_charges_dense_sites_and_conv_kernels_use_erk():
    got = allocate_densities(MLP, 0.1, "uniform", dense=["fc3"])
    assert got == {"fc1": 43_760 / 473_600, "fc2": 43_760 / 473_600, "fc3": 1.0}
    assert allocate_densities(MLP, 0.1) == {n: 0.1 for n in MLP}
    kernels = {"a": torch.Size([8, 4, 3, 3]), "b": torch.Size([16, 8, 3, 3])}
    got = allocate_densities(kernels, 0.5, "erk")
    eps = 0.5 * (288 + 1152) / (18 + 30)  # raw (8+4+3+3)/288, (16+8+3+3)/1152
    assert got == pytest.approx({"a": eps * 18 / 288, "b": eps * 30 / 1152})
    with pytest.raises(ValueError, match="more than the budget"):
        allocate_densities(MLP, 0.001, dense=["fc3"])
    with pytest.raises(ValueError, match="allocation must be one of"):
        allocate_densities(MLP, 0.1, "magic")


def test_guide_allocation_makes_capped_sites_dense_and_charges_them():
    # (30, 20) and (2, 30) weights: ERK caps the output layer at 0.3.
    model = tiny_classifier(in_features=20, hidden=30, classes=2, num_data=100)
    x, y = classification_data(n=8, in_features=20, classes=2)
    shapes = {
        n: s["value"].shape
        for n, s in pyro.poutine.trace(model).get_trace(x, y).nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and s["value"].dim() >= 2
    }
    for kwargs in ({"allocation": "erk"}, {"dense_below": min(
            s.numel() for s in shapes.values())}):  # fmt: skip
        guide = AutoSparseNormal(model, density=0.3, **kwargs).setup(x, y)
        charged = guide.charged_site_names()
        assert charged and not set(charged) & set(guide.sparse_site_names())
        active = sum(guide.num_active().values()) + sum(
            shapes[n].numel() for n in charged
        )
        budget = 0.3 * sum(s.numel() for s in shapes.values())
        assert abs(active - budget) <= len(shapes)  # rounding of each k
        assert guide.density == active / sum(s.numel() for s in shapes.values())
    with pytest.raises(ValueError, match="allocation must be one of"):
        AutoSparseNormal(model, allocation="rigl")
    with pytest.raises(ValueError, match="dense_below must be >= 0"):
        AutoSparseNormal(model, dense_below=-1)


# ----------------------------------------------------------------- background
def _posteriors(shape, k, background, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape.numel()
    idx = torch.randperm(n, generator=g)[:k].sort().values
    loc = torch.randn(k, generator=g, dtype=torch.float64)
    scale = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    plain = SparseNormal(loc, scale, idx, shape)
    bg = BackgroundSparseNormal(loc, scale, idx, shape, background)
    return plain, bg


def _dense_kl(q, m, sp):
    """Reference: elementwise KL of every coordinate, active and inactive."""
    mean = q.scatter(q.loc).reshape(-1)
    var = q.variance.reshape(-1)
    p = torch.distributions.Normal(torch.full_like(mean, m), torch.full_like(mean, sp))
    each = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, var.sqrt()), p
    )
    return each.sum()


@pytest.mark.parametrize("per", ["column", "layer", "rowcol"])
def test_background_variance_and_kl_equal_dense_references(per):
    shape = torch.Size([5, 7])
    size = {"column": 7, "layer": 1, "rowcol": 12}[per]
    s = torch.rand(size, dtype=torch.float64) + 0.05
    _, q = _posteriors(shape, 11, s)
    x = torch.randn(3, 7, dtype=torch.float64)
    mask = q.scatter(torch.ones_like(q.loc)) == 0
    if per == "rowcol":  # s_jc = r_j c_c
        each = torch.outer(s[:5], s[5:]) ** 2
    else:
        each = (s.expand(7) ** 2).expand(shape)
    dense_var = torch.where(mask, each, 0.0)
    expected = (x * x) @ dense_var.T
    assert torch.allclose(linear_background_variance(x, q), expected, rtol=1e-12)
    assert torch.allclose(q.background_variance(), dense_var, rtol=1e-14, atol=0)
    m, sp = 0.3, 1.7
    f64 = dict(dtype=torch.float64)
    kl = background_kl(
        q, torch.tensor(m, **f64).expand(shape), torch.tensor(sp, **f64).expand(shape)
    )
    assert kl.item() == pytest.approx(_dense_kl(q, m, sp).item(), rel=1e-10)
    prior = dist.Normal(torch.tensor(m, **f64), torch.tensor(sp, **f64))
    prior = prior.expand(shape).to_event(2)
    assert torch.distributions.kl_divergence(q, prior).item() == pytest.approx(
        kl.item(), rel=1e-12
    )


@pytest.mark.parametrize("groups, rowcol", [(1, False), (2, False), (1, True)])
def test_conv_background_variance_is_the_box_sum_minus_the_active_share(groups, rowcol):
    shape = torch.Size([4, 6 // groups, 3, 3])
    size = shape[0] + shape[1] if rowcol else shape[1]
    s = torch.rand(size, dtype=torch.float64) + 0.05
    _, q = _posteriors(shape, 20, s)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    kw = {"padding": 1, "stride": 2, "groups": groups}
    expected = F.conv2d(x * x, q.background_variance(), None, **kw)
    got = conv_background_variance(x, q, kw)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    entropy = torch.distributions.Normal(0, q.variance.sqrt()).entropy()
    assert q.entropy().item() == pytest.approx(entropy.sum().item(), rel=1e-12)


LAYER_HANDLERS = {
    "sampling": sparse_weight_sampling(sparse=False),
    "sampling_sparse": sparse_weight_sampling(sparse=True),
    "lrt": local_reparameterization(sparse=False),
    "lrt_sparse": local_reparameterization(sparse=True),
}


@pytest.mark.parametrize("handler", LAYER_HANDLERS.values(), ids=list(LAYER_HANDLERS))
def test_at_zero_background_a_linear_layer_is_exactly_ssvi(handler):
    shape = torch.Size([6, 9])
    plain, bg = _posteriors(shape, 12, torch.zeros(9, dtype=torch.float64))
    x = torch.randn(5, 9, dtype=torch.float64)
    outs = []
    for q in (plain, bg):
        torch.manual_seed(3)
        outs.append(F.linear(x, handler.wrap(q, "w")))
    assert torch.equal(outs[0], outs[1])


def test_at_zero_background_a_convolution_is_exactly_ssvi():
    shape = torch.Size([4, 3, 3, 3])
    plain, bg = _posteriors(shape, 30, torch.zeros(3, dtype=torch.float64))
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    for handler in (sparse_weight_sampling(sparse=False), local_reparameterization()):
        outs = []
        for q in (plain, bg):
            torch.manual_seed(4)
            outs.append(F.conv2d(x, handler.wrap(q, "w"), None, padding=1))
        assert torch.equal(outs[0], outs[1])


def test_sampled_background_has_the_variance_of_a_dense_weight_draw():
    """Monte Carlo: per output, the layer's variance under weight sampling is
    the active variance plus v (tolerance: 5 standard errors of a variance)."""
    shape = torch.Size([3, 8])
    s = torch.linspace(0.2, 1.0, 8, dtype=torch.float64)
    _, q = _posteriors(shape, 6, s)
    x = torch.randn(1, 8, dtype=torch.float64)
    torch.manual_seed(0)
    handler = sparse_weight_sampling(sparse=False)
    draws = torch.cat([F.linear(x, handler.wrap(q, "w")) for _ in range(20_000)])
    expected = (x * x) @ q.variance.T
    var = draws.var(0)
    se = expected[0] * (2 / (len(draws) - 1)) ** 0.5  # of a Gaussian's variance
    assert torch.all((var - expected[0]).abs() < 5 * se)


# ------------------------------------------------------------ guide and steps
def _background_pair(kind, per="column"):
    model, x, y = _case(kind)
    dense = getattr(model, "dense_sites", ())
    guide = AutoSparseNormal(
        model, density=0.3, dense_sites=dense, background=per, background_init=0.05
    ).setup(x, y)
    return model, guide, x, y


CASES = [(e, k, "none", "column") for e in sorted(ELBOS) for k in ("mlp", "cnn")]
CASES += [
    ("TraceSparseMeanField_ELBO", k, h, "column")
    for k in ("mlp", "cnn")
    for h in ("lrt", "lrt_sparse", "sparse_sampling")
]
CASES += [("TraceSparseMeanField_ELBO", k, "none", "rowcol") for k in ("mlp", "cnn")]


@pytest.mark.parametrize("elbo_name, kind, handler, per", CASES)
def test_background_direct_step_equals_the_traced_elbo(elbo_name, kind, handler, per):
    model, guide, x, y = _background_pair(kind, per)
    elbo = ELBOS[elbo_name]()
    fast = TraceSparseMeanField_ELBO() if elbo_name.startswith("TraceSparse") else elbo
    step = direct_step(model, guide, fast)
    with HANDLERS[handler]():
        pyro.set_rng_seed(5)
        direct = _grads(step((x, y), {})[0], model, guide)
        pyro.set_rng_seed(5)
        traced = _grads(elbo.differentiable_loss(model, guide, x, y), model, guide)
    _assert_same(direct, traced)
    raw = [p for n, p in guide.named_parameters() if n.startswith("backgrounds.")]
    assert raw and {id(p) for p in raw} <= {id(p) for p in guide.parameters()}


def test_background_kl_stays_exact_across_a_reselection():
    model, guide, x, y = _background_pair("mlp")
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), update_every=1)
    pyro.set_rng_seed(0)
    before = guide.active_indices()
    for _ in range(3):
        svi.step(x, y)
    after = guide.active_indices()
    assert any(not torch.equal(before[n], after[n]) for n in before)
    for name in guide.sparse_site_names():
        q = guide.site_posterior(name)
        assert isinstance(q, BackgroundSparseNormal)
        prior = pyro.poutine.trace(model).get_trace(x, y).nodes[name]["fn"]
        base = prior.base_dist
        q64 = BackgroundSparseNormal(
            q.loc.double(), q.scale.double(), q.indices, q.event_shape, q.background
        )
        m, sp = float(base.loc.flatten()[0]), float(base.scale.flatten()[0])
        dense = _dense_kl(q64, m, sp)
        got = torch.distributions.kl_divergence(q, prior)
        assert got.item() == pytest.approx(dense.item(), rel=1e-5)


def test_background_guide_state_round_trip_and_options():
    model, guide, x, y = _background_pair("mlp", per="layer")
    scales = guide.background_scales()
    assert all(s.shape == (1,) for s in scales.values())
    state = guide.state_dict()
    fresh = AutoSparseNormal(model, density=0.3, background="layer")
    fresh.load_state_dict(state)
    fresh.setup(x, y)
    for name in guide.sparse_site_names():
        assert torch.equal(fresh.background_scales()[name], scales[name])
    wrong = AutoSparseNormal(model, density=0.3, background="column")
    with pytest.raises(ValueError, match="background scales of shape"):
        wrong.load_state_dict(state)
    with pytest.raises(ValueError, match="background must be None or one of"):
        AutoSparseNormal(model, background="row")
    with pytest.raises(ValueError, match="background_init must be a float > 0"):
        AutoSparseNormal(model, background="column", background_init=0.0)


# ------------------------------------------------------------- MI-based AUROC
def _two_samples(qs):
    """Inputs whose two posterior samples predict [q, 1-q] and [1-q, q]:
    mean [0.5, 0.5], so H[mean] = log 2 and MI = log 2 - H(q)."""
    q = torch.tensor(qs, dtype=torch.float64)
    h = -(q * q.log() + (1 - q) * (1 - q).log())
    return Prediction(torch.full((len(qs), 2), 0.5, dtype=torch.float64), h, None)


def test_mi_auroc_ranks_by_mutual_information_exactly():
    from pyro_ssvi.app.metrics import mutual_information
    from pyro_ssvi.app.training._evaluate import mi_auroc

    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    mi = mutual_information(*_two_samples([0.9])[:2])
    assert mi.item() == pytest.approx(math.log(2) - h, rel=1e-12)
    # In-distribution MI {0, 0.368}, OOD {0.082, 0.637}: 3 of 4 pairs ranked right.
    assert mi_auroc(_two_samples([0.5, 0.9]), _two_samples([0.7, 0.99])) == 0.75
    assert mi_auroc(_two_samples([0.5, 0.6]), _two_samples([0.9, 0.99])) == 1.0
    # Entropy of the mean is log 2 everywhere: it cannot tell them apart.
    from pyro_ssvi.app.metrics import ood_metrics

    same = ood_metrics(_two_samples([0.5, 0.9]).probs, _two_samples([0.7, 0.99]).probs)
    assert same["ood_auroc"] == 0.5


def test_compare_table_has_both_ood_aurocs():
    from pyro_ssvi.app.compare import markdown_table

    row = {
        "variant": "SSVI d=0.1",
        "density": 0.1,
        "ood_auroc": 0.96,
        "ood_auroc_mi": 0.93,
        "num_variational_params": 10,
    }
    table = markdown_table([row])
    assert "| OOD AUROC (entropy) | OOD AUROC (MI) |" in table
    assert "| 0.9600 | 0.9300 |" in table


def test_background_on_named_sites_only():
    model, x, y = _case("mlp")
    first, second = AutoSparseNormal(model, density=0.3).setup(x, y).sparse_site_names()
    guide = AutoSparseNormal(
        model, density=0.3, background="column", background_sites=[first]
    ).setup(x, y)
    assert list(guide.background_scales()) == [first]
    assert isinstance(guide.site_posterior(first), BackgroundSparseNormal)
    assert not isinstance(guide.site_posterior(second), BackgroundSparseNormal)
    with pytest.raises(ValueError, match="background_sites names"):
        AutoSparseNormal(model, background="column", background_sites=["x"]).setup(x, y)
    with pytest.raises(TypeError, match="background_sites must be a collection"):
        AutoSparseNormal(model, background="column", background_sites=first)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("background", "row", "--background must be one of"),
        ("allocation", "rigl", "allocation must be one of ('uniform', 'erk')"),
        ("dense_below", -3, "dense_below must be >= 0"),
    ],
)
def test_bad_family_settings_fail_in_one_line(field, value, message):
    from pyro_ssvi.app.training import ConfigError, TrainConfig

    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
    ) as e:
        TrainConfig(**{field: value})
    assert "\n" not in str(e.value)


def test_background_quantiles_are_its_normal_quantiles_off_the_active_set():
    model, guide, x, y = _background_pair("mlp", per="rowcol")
    name = guide.sparse_site_names()[0]
    q = guide.site_posterior(name)
    got = guide.quantiles([0.1, 0.5, 0.9])[name]
    mean = q.mean.detach()
    std = q.variance.detach().sqrt()
    expected = torch.distributions.Normal(mean, std).icdf(
        torch.tensor([0.1, 0.5, 0.9]).reshape(3, 1, 1)
    )
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
