"""fit_and_evaluate and over_seeds against closed forms (linear-Gaussian model) and numpy."""

import math

import numpy as np
import pytest
import torch

from pyro_vae.models import LinearGaussian
from pyro_vae.train import fit_and_evaluate, over_seeds


def test_held_out_bounds_match_the_exact_elbo_and_log_marginal():
    """After training, the held-out ELBO is the closed-form ELBO and L_K lies between the
    closed-form ELBO and the exact log p(x), each within 4 standard errors; the active units
    are the variances over test points of the guide's exact mean Ax + c; the summary's SE over
    points is std / sqrt(n)."""
    torch.manual_seed(0)
    m = LinearGaussian(4, 2).double()
    train, test = torch.randn(60, 4, dtype=torch.float64), torch.randn(30, 4, dtype=torch.float64)
    result = fit_and_evaluate(
        m.model,
        m.guide,
        train,
        test,
        epochs=2,
        batch_size=20,
        num_particles=200,
        elbo_particles=200,
        progress=False,
    )
    s = result.summary()
    exact_elbo = m.exact_elbo(test).detach()
    exact_log_p = m.log_marginal(test).detach()
    elbo_se = (result.elbo.standard_error.pow(2).sum().sqrt() / len(test)).item()
    assert s["elbo"] == pytest.approx(exact_elbo.mean().item(), abs=4 * elbo_se)
    mc_se = s["log_marginal_mc_se"]
    assert exact_elbo.mean().item() - 4 * mc_se <= s["log_marginal"] <= exact_log_p.mean().item() + 4 * mc_se
    assert s["log_marginal"] > s["elbo"]  # the gap here is far larger than both errors
    assert s["elbo_se_points"] == pytest.approx(result.elbo.value.std().item() / math.sqrt(30))
    r = m.recognition
    means = (test @ r.weight.T + r.bias).detach()
    torch.testing.assert_close(result.active_units["z"].variance, means.var(0))
    assert s["active_z"] == int((means.var(0) > 0.01).sum())
    assert s["num_test"] == 30 and s["num_particles"] == 200
    assert len(result.fit.history) == 2 and s["train_seconds"] > 0


def test_over_seeds_mean_and_standard_error():
    runs = [{"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 5.0}, {"a": 4.0}]
    out = over_seeds(runs)
    values = np.array([1.0, 2.0, 4.0])
    assert out["num_seeds"] == 3
    assert out["a"] == pytest.approx(values.mean())
    assert out["a_se_seeds"] == pytest.approx(values.std(ddof=1) / math.sqrt(3))
    assert "b" not in out  # not in every run
    assert math.isnan(over_seeds([{"a": 1.0}])["a_se_seeds"])
    with pytest.raises(ValueError):
        over_seeds([])
