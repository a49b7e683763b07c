"""The held-out L_K tracked during training: a run where the ELBO rises while L_K falls."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from pyro_vae.errors import InputError
from pyro_vae.train import fit
from pyro_vae.train.tracking import TRACKED


def model(x):
    """A frozen decoder with a two-mode posterior: z ~ N(0, 1), x ~ N(z^2, 0.5^2), so that
    x near 4 has posterior modes near z = +2 and z = -2 of equal mass."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z**2, 0.5).to_event(1), obs=x)


def guide(x):
    """One Gaussian for every datapoint, starting wide enough to cover both modes."""
    loc = pyro.param("loc", torch.tensor(1.5, dtype=x.dtype))
    scale = pyro.param("scale", torch.tensor(1.2, dtype=x.dtype), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale).expand([1]).to_event(1))


def _data():
    g = torch.Generator().manual_seed(0)
    x = 4.0 + 0.3 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    v = 4.0 + 0.3 * torch.randn(20, 1, generator=g, dtype=torch.float64)
    return x, v


def test_the_elbo_rises_while_the_held_out_lk_falls():
    """Maximizing the ELBO makes the Gaussian guide seek one mode (the ELBO's reverse KL is
    mode-seeking), which raises the ELBO by many nats while the importance-weighted bound,
    whose proposal now misses the other mode's half of the mass, falls toward
    log p(x) - log 2. The recorded curves must show both, by more than their errors."""
    x, v = _data()
    result = fit(
        model, guide, x, validation=v, epochs=40, batch_size=None, lr=0.05,
        track_log_marginal=1000, track_every=4, progress=False,
    )  # fmt: skip
    tracked = [h for h in result.history if not math.isnan(h["val_lk"])]
    assert [h["epoch"] for h in tracked] == list(range(4, 41, 4))
    assert all(math.isnan(h[k]) for h in result.history if h["epoch"] % 4 for k in TRACKED)
    first, last = tracked[0], tracked[-1]
    rise = last["val_lk_elbo"] - first["val_lk_elbo"]
    fall = first["val_lk"] - last["val_lk"]
    assert rise > 4 * math.hypot(first["val_lk_elbo_se"], last["val_lk_elbo_se"])
    assert fall > 4 * math.hypot(first["val_lk_se"], last["val_lk_se"])
    assert fall < math.log(2) + 4 * math.hypot(first["val_lk_se"], last["val_lk_se"])  # at most the lost mode
    for h in tracked:  # L_K >= ELBO up to errors, and the gap is their difference
        assert h["val_lk_gap"] > -4 * h["val_lk_gap_se"]
        assert h["val_lk_gap"] == pytest.approx(h["val_lk"] - h["val_lk_elbo"])
    with pyro.get_param_store().scope(result.param_state):
        assert abs(pyro.param("loc").item()) > 1.5 and pyro.param("scale").item() < 0.5  # one mode


def test_tracking_changes_no_draw_of_training():
    x, v = _data()
    kw = {"validation": v, "epochs": 3, "batch_size": 10, "lr": 0.05, "progress": False}
    plain = fit(model, guide, x, **kw)
    tracked = fit(model, guide, x, track_log_marginal=10, track_every=2, **kw)
    assert [h["train_objective"] for h in plain.history] == [h["train_objective"] for h in tracked.history]
    assert [h["val_elbo"] for h in plain.history] == [h["val_elbo"] for h in tracked.history]
    assert "val_lk" not in plain.history[0] and math.isnan(tracked.history[0]["val_lk"])


def test_tracking_needs_validation_and_a_positive_k():
    x, v = _data()
    with pytest.raises(InputError, match="validation"):
        fit(model, guide, x, epochs=1, track_log_marginal=10, progress=False)
    with pytest.raises(InputError, match="track_log_marginal"):
        fit(model, guide, x, validation=v, epochs=1, track_log_marginal=0, progress=False)
    with pytest.raises(InputError, match="track_every"):
        fit(model, guide, x, validation=v, epochs=1, track_log_marginal=5, track_every=0, progress=False)


def test_tracking_with_kept_graphs_gives_the_eager_values():
    """The tracker's kept CapturedLogWeights replays its chunks across epochs (the parameters
    change in place between them): every tracked value is the eager tracker's, bitwise."""
    from pyro_vae.infer.captured_log_weights import CapturedLogWeights
    from pyro_vae.train.tracking import LogMarginalTracker

    x, v = _data()
    kept = LogMarginalTracker(50, max_points=20, capture=CapturedLogWeights())
    eager = LogMarginalTracker(50, max_points=20, capture=None)
    with pyro.validation_enabled(False):  # as in fit's loop
        guide(x)
        for epoch in range(1, 5):
            with torch.no_grad():
                pyro.param("loc").add_(0.1)  # training moves the parameters in place
            assert kept(epoch, model, guide, (v,), plate_name=None) == eager(
                epoch, model, guide, (v,), plate_name=None
            )
    assert kept.capture.captured_chunks > 0, kept.capture.fallback_reason
