"""Per-epoch metrics (pyro_vae.train.metrics): one evaluation of the training and validation rows."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.train import metrics as metrics_module
from pyro_vae.train.metrics import epoch_metrics, plan_metrics
from pyro_vae.train.streams import as_streams


@pytest.fixture(autouse=True)
def _clear_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _program(scale: float | None = None):
    """z ~ N(0, 1), x ~ N(2z, 1) per row; the guide a point mass at a network's output, so
    every row's rate and distortion are functions of its own x, with no random draw (with a
    ``scale``, a Gaussian around it, which draws)."""
    net = torch.nn.Linear(3, 2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(torch.cat([2 * z, z[:, :1]], -1), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            loc = net(x)
            pyro.sample("z", (dist.Delta(loc) if scale is None else dist.Normal(loc, scale)).to_event(1))

    return model, guide


def _plan(model, guide, x, val):
    """The metrics' plan for 40 training rows (of ``x``) and the validation rows ``val``."""
    return plan_metrics(
        model,
        guide,
        as_streams(x, 16),
        plate_name=None,
        particles=1,
        batch_size=1024,
        max_points=40,
        validation=val,
    )


def _metrics(model, guide, x, val, *, joint: bool, monkeypatch):
    if not joint:
        monkeypatch.setattr(metrics_module, "_joint", lambda *a: None)
    plan = _plan(model, guide, x, val)
    assert (plan.joint is not None) == joint and not plan.unavailable
    torch.manual_seed(5)
    return epoch_metrics(plan, model, guide, val, None)


def test_training_and_validation_rows_evaluated_together_give_the_separate_metrics(monkeypatch):
    torch.manual_seed(0)
    model, guide = _program()
    x, val = torch.randn(60, 3), (torch.randn(25, 3),)
    joint = _metrics(model, guide, x, val, joint=True, monkeypatch=monkeypatch)
    separate = _metrics(model, guide, x, val, joint=False, monkeypatch=monkeypatch)
    assert set(joint) == set(separate)
    for name, value in separate.items():  # the same numbers, up to the rounding of other batch sizes
        assert joint[name] == pytest.approx(value, rel=1e-5), name


def test_rows_that_cannot_be_concatenated_are_evaluated_apart():
    torch.manual_seed(0)
    model, guide = _program()
    x = torch.randn(60, 3)
    assert _plan(model, guide, x, (torch.randn(25, 3, dtype=torch.float64),)).joint is None
    assert _plan(model, guide, x, None).joint is None  # no validation rows


def test_the_metrics_leave_the_training_s_random_state_as_they_found_it():
    torch.manual_seed(0)
    model, guide = _program(scale=0.5)  # the metrics' particles come from the generators
    x, val = torch.randn(60, 3), (torch.randn(25, 3),)
    plan = _plan(model, guide, x, val)
    before = torch.get_rng_state()
    first = epoch_metrics(plan, model, guide, val, None)
    assert torch.equal(torch.get_rng_state(), before)
    assert epoch_metrics(plan, model, guide, val, None) == first  # the same state, the same draws
