"""fit's default step: captured and replayed once a structure is known, bitwise the eager step."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae.errors import CaptureFallbackWarning, InputError
from pyro_vae.estimators import VIMCO, ScoreFunctionELBO
from pyro_vae.estimators.baselines import DecayingAverageBaseline
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit
from pyro_vae.train.step import FIT_CAPTURE_AFTER, step_loss


def _x(n=64, d=6, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def _fit_vae(**options):
    torch.manual_seed(0)
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
    res = fit(vae.model, vae.guide, _x(), epochs=4, batch_size=8, lr=0.05, progress=False, **options)
    return res, [p.detach().clone() for p in vae.parameters()]


def test_the_default_step_is_captured_and_bitwise_the_eager_step():
    (eager, eager_params), (default, default_params) = _fit_vae(capture_after=None), _fit_vae()
    assert eager.captured_steps == 0 and eager.eager_reason == "capture_after=None"
    # 32 steps of one structure: eager FIT_CAPTURE_AFTER times, then replayed
    assert default.captured_steps == 32 - FIT_CAPTURE_AFTER, default.eager_reason
    assert default.eager_reason == ""
    assert [r["train_objective"] for r in eager.history] == [r["train_objective"] for r in default.history]
    for a, b in zip(eager_params, default_params, strict=True):
        assert torch.equal(a, b)


def test_capture_after_is_checked_before_work():
    with pytest.raises(InputError, match="capture_after"):
        _fit_vae(capture_after=0)


def test_losses_with_state_of_their_own_and_pyro_elbos_stay_eager():
    assert step_loss(pyro.infer.Trace_ELBO()).__class__ is pyro.infer.Trace_ELBO
    stateful = ScoreFunctionELBO(baseline=DecayingAverageBaseline())
    assert step_loss(stateful) is stateful
    assert step_loss(MeanFieldELBO(), capture_after=None).__class__ is MeanFieldELBO
    assert type(step_loss(ScoreFunctionELBO())).__name__ == "CapturedLoss"  # no baseline: no state
    assert type(step_loss(VIMCO(num_particles=3))).__name__ == "CapturedLoss"
    res, _ = _fit_vae(loss=pyro.infer.Trace_ELBO())
    assert res.captured_steps == 0 and "ParticleLoss" in res.eager_reason


class _Switching(torch.nn.Module):
    """A program with Python state outside its arguments: a likelihood scale read from an
    attribute (``per_call`` adds to it on every call), which a captured graph would freeze."""

    def __init__(self, per_call=0.0):
        super().__init__()
        self.vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
        self.scale, self.per_call = 1.0, per_call

    def model(self, x, num_data=None):
        self.scale += self.per_call
        with poutine.scale(scale=self.scale):
            self.vae.model(x, num_data=num_data)

    def guide(self, x, num_data=None):
        self.vae.guide(x, num_data=num_data)


def _fit_switching(capture_after, *, per_call=0.0, switch_at=None):
    torch.manual_seed(0)
    program = _Switching(per_call)
    steps = []

    def transform(batch):  # the test's hook into the loop: change the program's state mid-run
        steps.append(1)
        if len(steps) == switch_at:
            program.scale = 2.0
        return batch

    res = fit(
        program.model,
        program.guide,
        _x(),
        epochs=3,
        batch_size=8,
        lr=0.05,
        progress=False,
        capture_after=capture_after,
        transform=transform,
    )
    return res, [p.detach().clone() for p in program.parameters()]


def test_a_program_whose_state_changes_every_call_is_never_replayed():
    """The capture's own check (trace, then an eager run, then the graph) sees the change. (The
    run is not the eager run's: the capture's extra calls moved the program's counter on, as
    the metrics' calls do.)"""
    captured, _ = _fit_switching(2, per_call=0.01)
    assert captured.captured_steps == 0
    assert "differs from the eager one" in captured.eager_reason


def test_state_that_changes_later_is_caught_by_a_checked_replay():
    """8 steps an epoch; steps 1-2 eager, replays from step 3 on, checked at replays 1, 2, 4, 8
    and at the first step of every epoch (steps 9 and 17). Changed before step 13, the stale
    graph runs until the check at step 17, which fails: 14 replays, then eager."""
    with pytest.warns(CaptureFallbackWarning, match="depends on state outside"):
        res, _ = _fit_switching(2, switch_at=13)
    assert "depends on state outside" in res.eager_reason
    assert res.captured_steps == 14
