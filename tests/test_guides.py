"""AutoSparseNormal: site selection, sampling, introspection, composition, state."""

from __future__ import annotations

import io
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import LinearRegression, classification_data, tiny_classifier
from pyro import poutine
from pyro.infer import Predictive, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal, init_to_value
from pyro.nn import PyroModule, PyroSample

from pyro_ssvi import AutoSparseNormal, SparseNormal
from pyro_ssvi.guides import DEFAULT_MIN_SPARSE_NUMEL

X, Y = classification_data()


def _guide(density=0.3, **kwargs):
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=density, **kwargs)
    guide.setup(X, Y)
    return model, guide


def _off_active(guide, name, value):
    mask = torch.ones(value.numel(), dtype=torch.bool)
    mask[guide.active_indices()[name]] = False
    return value.reshape(-1)[mask]


# ------------------------------------------------------------- site selection
def test_default_rule_weights_sparse_biases_dense():
    _, guide = _guide()
    assert guide.sparse_site_names() == ["net.0.weight", "net.2.weight"]
    for name in guide.site_names():
        assert (name in guide.sparse_site_names()) == name.endswith("weight")


@pytest.mark.parametrize("density", [1e-6, 0.01, 0.1, 0.3, 0.5, 1.0])
def test_active_count_is_rounded_density_with_a_floor_per_output_unit(density):
    from pyro_ssvi.guides import active_floor

    # Weights (8, 6) and (3, 8): floors of 8 and 3 active, one per output unit.
    floors = {"net.0.weight": 8, "net.2.weight": 3}
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=density)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide.setup(X, Y)
    raised = {}
    for name, k in guide.num_active().items():
        numel = guide.site_shape(name).numel()
        assert k == max(floors[name], round(density * numel))
        assert active_floor(guide.site_shape(name)) == floors[name]
        if round(density * numel) < floors[name]:
            raised[name] = (
                f"AutoSparseNormal: density {density:g} would keep "
                f"{round(density * numel)} of the {numel} coordinates of site "
                f"{name!r}; it keeps k={floors[name]}, the floor"
            )
    # One warning per site at its floor, naming the site and the k it keeps.
    texts = [str(w.message) for w in caught]
    assert len(texts) == len(raised) and all(w.category is UserWarning for w in caught)
    for name, start in raised.items():
        assert any(t.startswith(start) for t in texts), (start, texts)
    total = sum(guide.site_shape(n).numel() for n in guide.sparse_site_names())
    assert guide.density == sum(guide.num_active().values()) / total


def test_floor_of_vector_sites_and_absurd_densities_warn_without_numpy_noise():
    class Wide(PyroModule):
        def __init__(self):
            super().__init__()
            n = DEFAULT_MIN_SPARSE_NUMEL + 1
            self.v = PyroSample(dist.Normal(0.0, 1.0).expand([n]).to_event(1))

        def forward(self):
            return self.v

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide = AutoSparseNormal(Wide(), density=1e-6).setup()
    assert [str(w.message) for w in caught] == [
        "AutoSparseNormal: density 1e-06 would keep 0 of the 4097 coordinates of "
        "site 'v'; it keeps k=1, the floor (one per output unit of a weight, 1 for "
        "a vector: see pyro_ssvi.guides.active_floor)"
    ]
    assert guide.num_active() == {"v": 1} and guide.density == 1 / 4097
    assert guide()["v"].count_nonzero() == 1


def test_large_vector_site_is_sparse_by_default():
    class Wide(PyroModule):
        def __init__(self):
            super().__init__()
            n = DEFAULT_MIN_SPARSE_NUMEL + 1
            self.v = PyroSample(dist.Normal(0.0, 1.0).expand([n]).to_event(1))
            self.small = PyroSample(dist.Normal(0.0, 1.0).expand([7]).to_event(1))

        def forward(self):
            return self.v.sum() + self.small.sum()

    guide = AutoSparseNormal(Wide(), density=0.5).setup()
    assert guide.sparse_site_names() == ["v"]


def test_sparse_sites_by_name_and_predicate():
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3, sparse_sites=["net.2.weight"])
    guide.setup(X, Y)
    assert guide.sparse_site_names() == ["net.2.weight"]
    pyro.clear_param_store()
    guide = AutoSparseNormal(
        tiny_classifier(),
        density=0.3,
        sparse_sites=lambda name, site: name.startswith("net.0"),
    ).setup(X, Y)
    assert guide.sparse_site_names() == ["net.0.weight", "net.0.bias"]


# ------------------------------------------------------------------ sampling
def test_samples_directly_at_site_with_zeros_off_active_set():
    _, guide = _guide()
    trace = poutine.trace(guide).get_trace(X, Y)
    sample_sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sample_sites == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    for name in guide.sparse_site_names():
        site = trace.nodes[name]
        assert isinstance(site["fn"], SparseNormal)
        assert site["value"].shape == guide.site_shape(name)
        assert torch.all(_off_active(guide, name, site["value"]) == 0)


def test_mean_field_elbo_kl_is_exact_and_deterministic():
    """With no observations the loss is the KL, which must not fluctuate."""

    class PriorOnly(PyroModule):
        def __init__(self):
            super().__init__()
            self.w = PyroSample(dist.Normal(0.0, 2.0).expand([3, 4]).to_event(2))

        def forward(self):
            return self.w

    model = PriorOnly()
    guide = AutoSparseNormal(model, density=0.5, init_scale=0.3)
    elbo = TraceMeanField_ELBO()
    losses = {elbo.loss(model, guide) for _ in range(5)}
    assert len(losses) == 1
    post = guide.site_posterior("w")
    expected = torch.distributions.kl_divergence(
        dist.Normal(post.loc, post.scale), dist.Normal(0.0, 2.0)
    ).sum()
    # The 6 inactive coordinates are exact zeros: -log N(0; 0, 2^2) each.
    expected += 6 * (math.log(2.0) + 0.5 * math.log(2 * math.pi))
    assert losses.pop() == pytest.approx(expected.item(), rel=1e-6)


def test_initial_active_set_is_seeded_and_uniform():
    def first_layer_indices(seed):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        return _guide(0.25)[1].active_indices()["net.0.weight"]

    assert torch.equal(first_layer_indices(3), first_layer_indices(3))
    assert not torch.equal(first_layer_indices(3), first_layer_indices(4))
    # Inclusion frequency of each of the 48 coordinates over n seeds is
    # Binomial(n, k/48)/n; allow 5 standard errors.
    n = 300
    counts = torch.zeros(48)
    for seed in range(n):
        counts[first_layer_indices(seed)] += 1
    p = 12 / 48
    assert torch.all((counts / n - p).abs() < 5 * math.sqrt(p * (1 - p) / n))


def test_init_loc_fn_values_are_gathered_at_active_set():
    model = tiny_classifier()
    values = {"net.0.weight": torch.arange(48.0).reshape(8, 6)}
    guide = AutoSparseNormal(
        model, density=0.25, init_loc_fn=init_to_value(values=values)
    ).setup(X, Y)
    loc, _ = guide._get_loc_and_scale("net.0.weight")
    idx = guide.active_indices()["net.0.weight"]
    assert torch.equal(loc.detach(), idx.float())


# ------------------------------------------------------------- introspection
def test_median_quantiles_and_posterior():
    _, guide = _guide()
    med = guide.median()
    q = guide.quantiles([0.1, 0.5, 0.9])
    for name in guide.site_names():
        assert med[name].shape == guide.site_shape(name)
        assert q[name].shape == (3,) + guide.site_shape(name)
        assert torch.allclose(q[name][1], med[name], atol=1e-6)
        assert torch.all(q[name][0] <= q[name][2])
    for name in guide.sparse_site_names():
        assert torch.all(_off_active(guide, name, med[name]) == 0)
        assert torch.all(_off_active(guide, name, q[name][2]) == 0)
        post = guide.site_posterior(name)
        assert torch.equal(post.mean, med[name])
    assert isinstance(guide.site_posterior("net.0.bias"), dist.Independent)
    with pytest.raises(KeyError, match="no site 'nope'"):
        guide.site_posterior("nope")


def test_num_variational_params_counts_active_and_dense():
    _, guide = _guide(0.25)
    expected = 2 * (12 + 6 + 8 + 3)  # (loc, scale) x (active w1, w2, dense b1, b2)
    assert guide.num_variational_params() == expected
    # guide.parameters() are the variational parameters: never the (untrained)
    # active indices of w1, w2, which are stored beside them.
    assert sum(p.numel() for p in guide.parameters()) == expected


def test_unbuilt_guide_says_what_to_do():
    guide = AutoSparseNormal(tiny_classifier())
    with pytest.raises(RuntimeError, match="call guide.setup"):
        guide.active_indices()


# ---------------------------------------------------------------- composition
def test_predictive_with_return_sites():
    model, guide = _guide()
    out = Predictive(model, guide=guide, num_samples=4, return_sites=("obs",))(X)
    assert out["obs"].shape == (4, len(X))


@pytest.mark.filterwarnings("ignore:Failed to verify mean field restriction")
def test_inside_auto_guide_list_with_block():
    model = tiny_classifier()
    is_weight = lambda msg: msg["name"].endswith("weight")  # noqa: E731
    guide = AutoGuideList(model)
    guide.append(
        AutoSparseNormal(poutine.block(model, expose_fn=is_weight), density=0.3)
    )
    guide.append(AutoNormal(poutine.block(model, hide_fn=is_weight)))
    elbo = TraceMeanField_ELBO()
    assert math.isfinite(elbo.loss(model, guide, X, Y))
    med = guide.median()
    assert sorted(med) == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]
    assert guide[0].sparse_site_names() == ["net.0.weight", "net.2.weight"]


def test_module_local_params_leave_the_global_store_empty():
    pyro.settings.set(module_local_params=True)
    model, guide = _guide()
    TraceMeanField_ELBO().loss(model, guide, X, Y)
    assert len(pyro.get_param_store()) == 0
    assert guide.num_variational_params() > 0


def test_a_new_guide_reuses_the_global_store_like_any_pyro_module():
    """Like AutoNormal, a new guide of the same name picks up the store's
    parameters; its locs, scales and indices all come from there, together."""
    model, guide = _guide()
    TraceMeanField_ELBO().loss(model, guide, X, Y)  # registers its params
    _, again = _guide()
    again(X, Y)
    assert all(
        torch.equal(a, b) for a, b in zip(guide.parameters(), again.parameters())
    )
    assert all(
        torch.equal(guide.active_indices()[k], v)
        for k, v in again.active_indices().items()
    )


def test_partial_stale_store_entries_are_refused():
    """Locs without indices (e.g. from an old file) cannot be paired: refuse."""
    model, guide = _guide()
    TraceMeanField_ELBO().loss(model, guide, X, Y)
    del pyro.get_param_store()["AutoSparseNormal.indices.net.0.weight"]
    with pytest.raises(ValueError, match="pyro.clear_param_store"):
        _guide()


# ------------------------------------------------------------------- state
def _autonormal_state():
    model = tiny_classifier()
    guide = AutoNormal(model)
    guide(X, Y)
    return guide.state_dict()


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_roundtrip_into_fresh_guide_before_first_call():
    _, guide = _guide()
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(torch.randn_like(p))
    state = _roundtrip(guide.state_dict())
    # tensors only, indices as integers (int32: compact on disk)
    assert all(torch.is_tensor(v) for v in state.values())
    assert state["indices.net.0.weight_unconstrained"].dtype == torch.int32
    pyro.clear_param_store()
    fresh = AutoSparseNormal(tiny_classifier(), density=0.3)
    fresh.load_state_dict(state)
    with pytest.raises(ValueError, match="call guide.setup"):
        fresh.median()  # not yet checked against the model
    saved, loaded = guide.median(), fresh.median(X)  # checks it, without labels
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    for name, idx in fresh.active_indices().items():
        assert idx.dtype == torch.int64 and torch.equal(
            idx, guide.active_indices()[name]
        )
    fresh(X, Y)  # the loaded guide then runs against the model
    assert all(torch.equal(saved[k], fresh.median()[k]) for k in saved)


def test_state_dict_load_into_built_guide_and_mismatches():
    _, guide = _guide()
    state = guide.state_dict()
    pyro.clear_param_store()
    _, other = _guide()
    other.load_state_dict(state)
    assert all(
        torch.equal(a, b) for a, b in zip(guide.parameters(), other.parameters())
    )
    pyro.clear_param_store()
    _, denser = _guide(density=0.6)
    with pytest.raises(ValueError, match="different density"):
        denser.load_state_dict(state)
    pyro.clear_param_store()
    wrong = AutoSparseNormal(LinearRegression(6))
    wrong.setup(torch.zeros(3, 6))
    with pytest.raises(ValueError, match="do not match"):
        wrong.load_state_dict(state)
    with pytest.raises(ValueError, match="saved from an AutoSparseNormal"):
        AutoSparseNormal(tiny_classifier()).load_state_dict({})
    with pytest.raises(ValueError, match="saved from an AutoSparseNormal"):
        AutoSparseNormal(tiny_classifier()).load_state_dict(_autonormal_state())


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "density", [0.0, -0.1, -1e-9, 1.5, 1 + 1e-9, float("nan"), float("inf")]
)
def test_density_out_of_range(density):
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        AutoSparseNormal(tiny_classifier(), density=density)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(density="0.1"), TypeError, "density must be a float"),
        (dict(init_scale=0.0), ValueError, "init_scale must be > 0"),
        (dict(sparse_sites="net.0.weight"), TypeError, "not a string"),
        (dict(min_sparse_numel=0), ValueError, "min_sparse_numel"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AutoSparseNormal(tiny_classifier(), **kwargs)


def test_no_eligible_site_warns_and_works_as_autonormal():
    class Small(PyroModule):
        def __init__(self):
            super().__init__()
            self.b = PyroSample(dist.Normal(0.0, 1.0).expand([3]).to_event(1))

        def forward(self):
            return self.b

    with pytest.warns(UserWarning, match="no latent site is sparse"):
        guide = AutoSparseNormal(Small()).setup()
    # density is the active fraction of the sparse sites' coordinates: none here.
    assert guide.sparse_site_names() == [] and math.isnan(guide.density)
    assert guide()["b"].shape == (3,)
    # At density 1 a dense guide is what was asked for: no warning.
    AutoSparseNormal(Small(), density=1.0).setup()


def test_model_without_latent_sites_warns_and_works_as_autonormal():
    class Observed(PyroModule):
        def forward(self, y):
            pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    assert AutoNormal(Observed())(torch.tensor(0.5)) == {}
    # The same warning as for a model whose latent sites are all dense.
    with pytest.warns(UserWarning, match="no latent site is sparse") as caught:
        guide = AutoSparseNormal(Observed())
        assert guide(torch.tensor(0.5)) == {}
    assert "the model has no latent site at all" in str(caught[0].message)
    assert len(caught) == 1 and math.isnan(guide.density)
    assert guide.num_active() == {} and guide.num_variational_params() == 0
    # At density 1 a dense guide is what was asked for: no warning.
    assert AutoSparseNormal(Observed(), density=1.0)(torch.tensor(0.5)) == {}


def test_non_factorised_prior_on_requested_site_is_refused():
    class Correlated(PyroModule):
        def __init__(self):
            super().__init__()
            cov = torch.eye(4) + 0.5
            self.w = PyroSample(dist.MultivariateNormal(torch.zeros(4), cov))

        def forward(self):
            return self.w

    with pytest.raises(ValueError, match="does not factorise"):
        AutoSparseNormal(Correlated(), sparse_sites=["w"]).setup()


def test_unknown_sparse_site_names_are_listed():
    with pytest.raises(ValueError, match="not latent sites"):
        AutoSparseNormal(tiny_classifier(), sparse_sites=["fc9.weight"]).setup(X, Y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_moves_indices_and_samples_on_device():
    _, guide = _guide()
    guide.cuda()
    assert all(i.is_cuda for i in guide.active_indices().values())
    assert all(v.is_cuda for v in guide.median().values())


def test_dense_sites_override_the_default_rule():
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3, dense_sites=["net.0.weight"])
    guide.setup(X, Y)
    assert guide.sparse_site_names() == ["net.2.weight"]
    with pytest.raises(ValueError, match="dense_sites names"):
        AutoSparseNormal(tiny_classifier(), dense_sites=["nope"]).setup(X, Y)
    with pytest.raises(TypeError, match="dense_sites must be a collection"):
        AutoSparseNormal(tiny_classifier(), dense_sites="net.0.weight")


def test_init_scale_pair_draws_folded_normal_scales():
    """init_scale=(m, s): sigma = |eps|, eps ~ N(m, s^2), per coordinate. The
    folded normal's mean is s sqrt(2/pi) exp(-m^2 / 2s^2) + m erf(m / s sqrt 2)
    and its second moment m^2 + s^2."""
    m, sd = 6e-4, 5e-4
    model = tiny_classifier(in_features=60, hidden=100)
    x, y = torch.randn(4, 60), torch.tensor([0, 1, 2, 0])
    guide = AutoSparseNormal(model, density=0.5, init_scale=(m, sd)).setup(x, y)
    scales = torch.cat(
        [guide.site_posterior(n).scale for n in guide.sparse_site_names()]
    )
    scales = scales.double()
    n = scales.numel()
    mean = sd * math.sqrt(2 / math.pi) * math.exp(
        -(m**2) / (2 * sd**2)
    ) + m * math.erf(m / (sd * math.sqrt(2)))
    second = m**2 + sd**2
    std = math.sqrt(second - mean**2)
    # 5 standard errors of the mean and of the second moment (whose variance
    # is E[s^4] - E[s^2]^2, with E[s^4] = m^4 + 6 m^2 sd^2 + 3 sd^4).
    assert abs(scales.mean().item() - mean) < 5 * std / math.sqrt(n)
    fourth = m**4 + 6 * m**2 * sd**2 + 3 * sd**4
    assert abs((scales**2).mean().item() - second) < 5 * math.sqrt(
        (fourth - second**2) / n
    )
    assert bool((scales > 0).all()) and scales.std() > 0
    with pytest.raises(ValueError, match="mean >= 0"):
        AutoSparseNormal(model, init_scale=(-1.0, 0.1))
    with pytest.raises(TypeError, match="pair"):
        AutoSparseNormal(model, init_scale=(1.0, 0.1, 3.0))


def test_module_local_indices_are_module_state_never_parameters():
    """Under module_local_params the indices are an int64 buffer: every
    parameter an optimiser over Pyro's ELBOModule sees is trained and moves
    (Pyro's own tests/nn/test_module.py::test_svi_elbomodule_interface
    requires it), and a state dict loads into either storage."""
    from pyro.infer import TraceMeanField_ELBO

    pyro.settings.set(module_local_params=True)
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.5).setup(X, Y)
    elbo = TraceMeanField_ELBO()(model, guide)
    names = [name for name, _ in elbo.named_parameters()]
    assert names and not any(".indices." in name for name in names)
    before = [p.detach().clone() for p in elbo.parameters()]
    optimizer = torch.optim.Adam(elbo.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        elbo(X, Y).backward()
        optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, elbo.parameters()))
    buffers = dict(guide.named_buffers())
    assert buffers["indices.net.0.weight"].dtype == torch.int64
    state = guide.state_dict()
    assert state["indices.net.0.weight_unconstrained"].dtype == torch.int32
    for local in (True, False):  # into a guide of either storage
        pyro.settings.set(module_local_params=local)
        pyro.clear_param_store()
        other = AutoSparseNormal(tiny_classifier(), density=0.5).setup(X, Y)
        other.load_state_dict(state)
        for name, idx in guide.active_indices().items():
            assert torch.equal(other.active_indices()[name], idx)
        assert all(torch.equal(other.median()[k], v) for k, v in guide.median().items())
