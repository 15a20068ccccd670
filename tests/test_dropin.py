"""The drop-in promise, as Pyro users write their code.

Each test reproduces a habit that worked with ``AutoNormal`` + ``SVI`` and broke
(or silently gave a wrong posterior) with ``AutoSparseNormal`` + ``SparseSVI``
in pyro_ssvi 0.1; each failed there and passes now.
"""

from __future__ import annotations

import copy
import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import classification_data, tiny_classifier
from pyro import poutine
from pyro.infer import (
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Predictive,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
from pyro.nn import PyroModule, PyroParam, PyroSample

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi.initialization import init_gives_values

X, Y = classification_data(n=48, in_features=6)


def _accuracy(model, guide):
    with torch.no_grad():
        logits = poutine.condition(model, data=guide.median())(X)
    return (logits.argmax(-1) == Y).float().mean().item()


def _trained(density=0.3, steps=60, loss=None, **kwargs):
    kwargs.setdefault("num_steps", 400)  # not needed; lets 0.1 run these tests
    model = tiny_classifier(num_data=len(X))
    guide = AutoSparseNormal(model, density=density)
    svi = SparseSVI(
        model, guide, pyro.optim.Adam({"lr": 0.03}), loss, update_every=5, **kwargs
    )
    for _ in range(steps):
        svi.step(X, Y)
    return model, guide, svi


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------- construction
def test_sparse_svi_is_constructed_exactly_like_svi():
    model = tiny_classifier(num_data=len(X))
    guide = AutoSparseNormal(model, density=0.3)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    for _ in range(200):
        loss = svi.step(X, Y)
    assert isinstance(loss, float)
    # The horizon-free default schedule: updates every 100 steps, fraction
    # alpha / (1 + u / 25) after u updates, never stopping.
    assert [u.step for u in svi.updates] == [100, 200]
    assert svi.updates[1].drop_fraction == pytest.approx(0.3 / (1 + 1 / 25))
    # num_steps still gives the reference cosine schedule (stop at 75%).
    svi = SparseSVI(model, guide, pyro.optim.Adam({}), Trace_ELBO(), num_steps=1000)
    assert svi.stop_updates_at == 750
    assert svi.current_drop_fraction(375) == pytest.approx(0.15)


@pytest.mark.parametrize("wrap", ["scale", "block", "explicit"])
def test_handler_wrapped_guides_are_accepted(wrap):
    model = tiny_classifier(num_data=len(X))
    inner = AutoSparseNormal(model, density=0.3)
    kwargs = {}
    if wrap == "scale":
        guide = poutine.scale(inner, scale=1.0 / len(X))
        model = poutine.scale(model, scale=1.0 / len(X))
    elif wrap == "block":
        guide = poutine.block(inner, hide=["some.other.site"])
    else:
        guide = lambda *a, **k: inner(*a, **k)  # noqa: E731 (a plain function)
        kwargs["sparse_guides"] = inner
    svi = SparseSVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.03}),
        update_every=3,
        num_steps=99,
        **kwargs,
    )
    inner.setup(X, Y)
    before = inner.active_indices()
    for _ in range(9):
        svi.step(X, Y)
    assert svi.num_updates == 3
    assert sum(sum(u.num_swapped.values()) for u in svi.updates) > 0
    assert not _same(before, inner.active_indices())


# -------------------------------------------------------- saving, restoring
def test_param_store_load_into_a_built_guide_restores_it_exactly(tmp_path):
    model, guide, _ = _trained()
    trained_median, trained_acc = guide.median(), _accuracy(model, guide)
    path = tmp_path / "params.pt"
    pyro.get_param_store().save(path)
    # A new session: build and call the guide, then load Pyro's param store.
    pyro.clear_param_store()
    guide = AutoSparseNormal(model, density=0.3)
    guide(X, Y)
    pyro.get_param_store().load(path)
    guide(X, Y)
    assert _same(guide.median(), trained_median)
    assert _accuracy(model, guide) == trained_acc


def test_rollback_by_param_store_state_after_further_updates():
    model, guide, svi = _trained()
    best = copy.deepcopy(pyro.get_param_store().get_state())
    best_median, best_indices = guide.median(), guide.active_indices()
    for _ in range(30):  # more steps and six more subspace updates
        svi.step(X, Y)
    assert not _same(guide.active_indices(), best_indices)
    pyro.get_param_store().set_state(best)  # early stopping: roll back
    assert _same(guide.median(), best_median)
    assert _same(guide.active_indices(), best_indices)
    guide(X, Y)
    assert _same(guide.median(), best_median)


def test_state_dict_is_tensors_only_and_clones():
    _, guide, _ = _trained(steps=10)
    state = guide.state_dict()
    assert all(torch.is_tensor(v) for v in state.values())
    copied = {k: v.clone() for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(copied, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)
    pyro.clear_param_store()
    fresh = AutoSparseNormal(tiny_classifier(num_data=len(X)), density=0.3)
    fresh.load_state_dict(restored)
    assert _same(fresh.median(X), guide.median())


def test_pickled_guide_restores_exactly(tmp_path):
    _, guide, _ = _trained(steps=10)
    path = tmp_path / "guide.pt"
    torch.save(guide, path)
    assert guide.model is not None  # saving left the guide itself intact
    # Our own file, holding a whole module: weights_only=False is needed.
    loaded = torch.load(path, weights_only=False)
    assert _same(loaded.median(), guide.median())
    pyro.set_rng_seed(3)
    a = guide(X, Y)
    pyro.set_rng_seed(3)
    b = loaded(X, Y)
    assert _same(a, b)


def test_loaded_never_called_guide_works_with_predictive():
    model, guide, _ = _trained(steps=10)
    state = guide.state_dict()
    pyro.clear_param_store()
    fresh = AutoSparseNormal(model, density=0.3)
    fresh.load_state_dict(state)
    pyro.set_rng_seed(1)
    out = Predictive(model, guide=fresh, num_samples=3, return_sites=("obs",))(X)
    pyro.set_rng_seed(1)
    ref = Predictive(model, guide=guide, num_samples=3, return_sites=("obs",))(X)
    assert out["obs"].shape == (3, len(X))
    assert torch.equal(out["obs"], ref["obs"])


def test_foreign_state_dict_into_never_called_guide_fails_loudly():
    _, guide, _ = _trained(steps=2)
    state = guide.state_dict()
    pyro.clear_param_store()
    other_model = tiny_classifier(hidden=5, num_data=len(X))  # another width
    fresh = AutoSparseNormal(other_model, density=0.3)
    fresh.load_state_dict(state)
    with pytest.raises(ValueError, match="call guide.setup"):
        fresh.median()
    with pytest.raises(ValueError, match="state is from another model"):
        fresh.median(X)
    with pytest.raises(ValueError, match="state is from another model"):
        fresh(X, Y)


# ----------------------------------------------------- torch optimiser path
@pytest.mark.parametrize("kind", ["adam", "sgd_momentum"])
def test_torch_optimizer_path_moves_moments_and_follows_the_schedule(kind):
    from pyro_ssvi import SubspaceScheduler

    pyro.settings.set(module_local_params=True)
    model = tiny_classifier(num_data=len(X))
    guide = AutoSparseNormal(model, density=0.4).setup(X, Y)
    elbo = TraceMeanField_ELBO()(model, guide)
    if kind == "adam":
        optimizer = torch.optim.Adam(elbo.parameters(), lr=0.02)
    else:
        optimizer = torch.optim.SGD(elbo.parameters(), lr=0.002, momentum=0.9)
    scheduler = SubspaceScheduler(model, guide, optimizer, update_every=4, num_steps=40)
    name = "net.0.weight"
    loc = guide.subspace_params(name).loc
    for step in range(1, 41):
        optimizer.zero_grad()
        elbo(X, Y).backward()
        optimizer.step()
        before = guide.active_indices()[name]
        moments = {k: v.clone() for k, v in optimizer.state[loc].items() if v.dim()}
        record = scheduler.step(X, Y)
        if record is None:
            continue
        after = guide.active_indices()[name]
        for key, old in moments.items():
            new = optimizer.state[loc][key]
            for i, j in enumerate(after.tolist()):
                if j in before.tolist():  # kept: its moment moved with it
                    assert new[i] == old[before.tolist().index(j)]
                else:  # newly active: a fresh start
                    assert new[i] == 0
    assert [u.step for u in scheduler.updates] == list(range(4, 30, 4))  # stop at 30
    fractions = [u.drop_fraction for u in scheduler.updates]
    assert fractions == sorted(fractions, reverse=True) and fractions[-1] < 0.1
    assert sum(sum(u.num_swapped.values()) for u in scheduler.updates) > 0


# --------------------------------------------------------- the objective
class HierarchicalRegression(PyroModule):
    """``W ~ Normal(0, tau)`` with a learnable prior scale ``tau`` (type-II ML)."""

    def __init__(self, d=30):
        super().__init__()
        self.tau = PyroParam(torch.tensor(1.0), dist.constraints.positive)
        self.w = PyroSample(
            lambda m: dist.Normal(0.0, m.tau).expand([1, d]).to_event(2)
        )

    def forward(self, x, y=None):
        mean = (x @ self.w.T)[:, 0]
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, 0.5), obs=y)


def test_learnable_prior_scale_is_fitted_as_trace_elbo_fits_it():
    """tau's optimum given q: tau^2 = sum_A (mu^2 + sigma^2) / n over all n
    coordinates (the n - k inactive ones are exact zeros); an objective that
    forgot them gives sum_A (...) / k, sqrt(n / k) = 2.24x too large here."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 30, generator=g)
    y = x[:, :3].sum(-1) + 0.5 * torch.randn(40, generator=g)
    model = HierarchicalRegression()
    guide = AutoSparseNormal(model, density=0.2)
    guide.setup(x, y)
    post = guide.site_posterior("w")
    mu, sigma = post.loc.detach(), post.scale.detach()
    expected = ((mu**2 + sigma**2).sum() / 30).sqrt()
    elbo = SparseSVI(model, guide, pyro.optim.Adam({})).elbo
    tau = model.tau_unconstrained
    # The loss is stationary in tau exactly at the closed form...
    with torch.no_grad():
        tau.copy_(expected.log())
    loss = elbo.differentiable_loss(model, guide, x, y)
    (grad,) = torch.autograd.grad(loss, tau)
    assert abs(grad.item()) < 1e-3
    # ...and fitting tau alone (the guide fixed) gets there from tau = 1.
    with torch.no_grad():
        tau.zero_()
    optimizer = torch.optim.Adam([tau], lr=0.05)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.99)
    for _ in range(400):
        optimizer.zero_grad()
        elbo.differentiable_loss(model, guide, x, y).backward()
        optimizer.step()
        decay.step()
    assert model.tau.item() == pytest.approx(expected.item(), rel=0.01)
    # Trace_ELBO's loss and its gradient in tau agree in expectation: with the
    # same weight draw (same seed) the likelihoods cancel, and what is left,
    # log q(w) - log p(w | tau) against the closed form, has mean zero.
    n = 1000
    diffs, grad_diffs = [], []
    for i in range(n):
        pairs = []
        for loss_fn in (Trace_ELBO().differentiable_loss, elbo.differentiable_loss):
            pyro.set_rng_seed(i)
            loss = loss_fn(model, guide, x, y)
            pairs.append((loss.item(), torch.autograd.grad(loss, tau)[0].item()))
        diffs.append(pairs[0][0] - pairs[1][0])
        grad_diffs.append(pairs[0][1] - pairs[1][1])
    for d in (torch.tensor(diffs), torch.tensor(grad_diffs)):
        # 5 standard errors of the Monte Carlo mean, and not vacuous.
        assert abs(d.mean()) < 5 * d.std() / math.sqrt(n) and d.std() > 0


# --------------------------------------------------------- compiled ELBOs
# torch >= 2.12 warns with FutureWarning, 2.11 with DeprecationWarning
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
@pytest.mark.parametrize("elbo", [JitTrace_ELBO, JitTraceMeanField_ELBO])
def test_jit_elbos_train_through_reselections(elbo):
    model, guide, svi = _trained(steps=30, loss=elbo(ignore_jit_warnings=True))
    assert svi.num_updates == 6
    assert sum(sum(u.num_swapped.values()) for u in svi.updates) > 0
    # The compiled graph reads the current indices: samples stay on the set.
    value = guide(X, Y)["net.0.weight"].reshape(-1)
    off = torch.ones_like(value, dtype=torch.bool)
    off[guide.active_indices()["net.0.weight"]] = False
    assert torch.all(value[off] == 0)
    assert _accuracy(model, guide) > 0.8


def test_jit_with_a_kl_schedule_is_refused_at_construction():
    model = tiny_classifier()
    guide = AutoSparseNormal(model)
    with pytest.raises(ValueError, match="compiles the loss once"):
        SparseSVI(model, guide, pyro.optim.Adam({}), JitTrace_ELBO(), kl_weight=min)


# ------------------------------------------------ superset of AutoNormal
def test_init_scale_defaults_are_autonormals_for_ordinary_sites():
    from pyro_ssvi.guides import DEFAULT_INIT_SCALE, DEFAULT_WEIGHT_INIT_SCALE

    assert DEFAULT_INIT_SCALE == 0.1 and DEFAULT_WEIGHT_INIT_SCALE == 0.01
    model = tiny_classifier(num_data=len(X))
    guide = AutoSparseNormal(model, density=0.3).setup(X, Y)
    assert torch.allclose(
        guide.site_posterior("net.0.bias").base_dist.scale,
        torch.tensor(DEFAULT_INIT_SCALE),
    )
    assert torch.allclose(
        guide.site_posterior("net.0.weight").scale,
        torch.tensor(DEFAULT_WEIGHT_INIT_SCALE),
    )


def test_get_posterior_is_the_joint_posterior_as_in_pyro():
    model = tiny_classifier(num_data=len(X))
    guide = AutoSparseNormal(model, density=0.5)
    joint = guide.get_posterior(X, Y)  # sets the guide up, like AutoContinuous
    median = guide.median()
    assert joint.event_shape == (sum(v.numel() for v in median.values()),)
    assert torch.equal(joint.mean, torch.cat([v.reshape(-1) for v in median.values()]))


def test_sparse_sites_predicate_is_asked_only_about_eligible_sites():
    class Mixed(PyroModule):
        def __init__(self):
            super().__init__()
            self.w = PyroSample(dist.Normal(0.0, 1.0).expand([4, 3]).to_event(2))
            self.s = PyroSample(dist.LogNormal(0.0, 1.0))

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
            return x @ self.w.transpose(-1, -2) * self.s + z[:, None]

    asked = []

    def predicate(name, site):
        asked.append(name)
        return True

    guide = AutoSparseNormal(Mixed(), density=0.5, sparse_sites=predicate)
    guide.setup(torch.zeros(2, 3))
    assert asked == ["w"]  # not the positive scale s, not the plate-local z
    assert guide.sparse_site_names() == ["w"]


# ----------------------------------------------------- pretrained networks
def test_pretrained_values_start_on_their_largest_coordinates():
    from pyro.infer.autoguide import init_to_value

    model = tiny_classifier(num_data=len(X))
    values = {k: torch.randn(v.shape) for k, v in model.initial_values.items()}
    guide = AutoSparseNormal(
        model, density=0.25, init_loc_fn=init_to_value(values=values)
    )
    guide.setup(X, Y)
    for name in guide.sparse_site_names():
        flat = values[name].reshape(-1)
        k = guide.num_active()[name]
        expected = flat.abs().argsort(descending=True, stable=True)[:k].sort().values
        assert torch.equal(guide.active_indices()[name], expected)
        assert torch.equal(guide.site_posterior(name).loc, flat[expected])
    # init_active="random" starts on a random subset of the same values; and
    # generic rules (the default init_to_kaiming) count as random draws.
    pyro.clear_param_store()
    guide = AutoSparseNormal(
        model,
        density=0.25,
        init_loc_fn=init_to_value(values=values),
        init_active="random",
    ).setup(X, Y)
    for name in guide.sparse_site_names():
        flat = values[name].reshape(-1)
        k = guide.num_active()[name]
        top = flat.abs().argsort(descending=True, stable=True)[:k].sort().values
        assert not torch.equal(guide.active_indices()[name], top)
        assert torch.equal(
            guide.site_posterior(name).loc, flat[guide.active_indices()[name]]
        )
    from pyro_ssvi.initialization import init_to_kaiming

    assert not init_gives_values(init_to_kaiming, "net.0.weight")
    assert init_gives_values(init_to_value(values=values), "net.0.weight")
    assert init_gives_values(model.init_loc_fn(keep=True), "net.0.weight")


def test_a_random_initialiser_of_the_users_gets_a_random_active_set():
    """A user's (or TyXe's) random initialiser is not given values: the
    active set is random, so the initial means are a plain sample of the draw.
    (Taken for given values, the set was the largest 10% of the draw: every
    initial mean beyond about 1.6 sigma, 2.1x too large on average.)"""
    pyro.set_rng_seed(0)
    sigma = 0.1

    def random_init(site):
        return torch.randn(site["fn"].shape()) * sigma

    model = tiny_classifier(in_features=40, hidden=50, num_data=len(X))
    guide = AutoSparseNormal(model, density=0.1, init_loc_fn=random_init)
    guide.setup(torch.randn(8, 40), Y[:8])
    locs = torch.cat([guide.site_posterior(n).loc for n in guide.sparse_site_names()])
    # |N(0, s^2)| > 1.645 s with probability 0.1: about 10% of a random set
    # (n >= 200, standard error 0.021), every coordinate of a top-10% set.
    beyond = (locs.abs() > 1.645 * sigma).double().mean().item()
    assert locs.numel() >= 200 and beyond < 0.25
    assert not init_gives_values(random_init, "net.0.weight")
    pyro.clear_param_store()
    largest = AutoSparseNormal(
        model, density=0.1, init_loc_fn=random_init, init_active="largest"
    ).setup(torch.randn(8, 40), Y[:8])
    locs = torch.cat(
        [largest.site_posterior(n).loc for n in largest.sparse_site_names()]
    )
    assert (locs.abs() > 1.2 * sigma).all()
