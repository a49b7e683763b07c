"""The hierarchical VAE: the program, its linear-Gaussian reduction against exact answers
(log p(x), the ELBO, the ELBO gap, per-layer KL and active units), and the tool chain."""

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae.bounds import elbo, elbo_gap, iwae, log_marginal
from pyro_vae.diagnostics import active_units_per_site, kl_per_site
from pyro_vae.errors import InputError
from pyro_vae.infer import MeanFieldELBO, terms
from pyro_vae.likelihoods import Bernoulli, Gaussian
from pyro_vae.models import HierarchicalVAE
from pyro_vae.train import fit
from tests.conftest import standard_error


def test_the_program_has_one_sample_site_per_layer_in_the_data_plate():
    vae = HierarchicalVAE(Bernoulli(6), latent_dims=(4, 3, 2), hidden=(5,))
    x = (torch.rand(8, 6) < 0.5).float()
    guide_trace = poutine.trace(vae.guide).get_trace(x, num_data=40)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, num_data=40)
    latent = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n.startswith("z")]
    assert latent == ["z3", "z2", "z1"] and vae.sites == ("z1", "z2", "z3")
    assert [n for n, s in guide_trace.nodes.items() if n.startswith("z")] == ["z1", "z2", "z3"]
    for name, width in zip(vae.sites, (4, 3, 2), strict=True):
        (frame,) = model_trace.nodes[name]["cond_indep_stack"]
        assert (frame.name, frame.size, frame.full_size) == ("data", 8, 40)
        assert model_trace.nodes[name]["fn"].event_shape == (width,)
    assert model_trace.nodes["x"]["scale"] == pytest.approx(40 / 8)
    with pytest.raises(InputError, match="at least two"):
        HierarchicalVAE(Bernoulli(6), latent_dims=(4,))


def _linear_vae(seed=0, d=4, k1=2, k2=1):
    """A hierarchical VAE with linear networks and constant scales: a linear-Gaussian model."""
    torch.manual_seed(seed)
    vae = HierarchicalVAE(Gaussian(d), latent_dims=(k1, k2), hidden=(), latent_hidden=()).double()
    with torch.no_grad():
        for net in [*vae.encoder, *vae.layers]:
            last = net.net[-1]
            last.weight[net.latent_dim :] = 0.0  # scale = softplus(bias): independent of the input
            last.bias[net.latent_dim :] = torch.randn(net.latent_dim, dtype=torch.float64) * 0.3
    return vae


def _affine(net):
    """(matrix, offset, scale) of a linear GaussianEncoder with constant scale."""
    k = net.latent_dim
    last = net.net[-1]
    scale = torch.nn.functional.softplus(last.bias[k:]) + net.min_scale
    return last.weight[:k], last.bias[:k], scale


@torch.no_grad()
def _joint(vae, dtype):
    """Mean and covariance of (z2, z1, x) under the model."""
    a_mat, a_off, s1 = _affine(vae.layers[0])  # z1 = A z2 + a + s1 e1
    w, b = vae.decoder[0].weight, vae.decoder[0].bias  # x = W z1 + b + psi ex
    psi = vae.likelihood(torch.zeros(1, w.shape[0], dtype=dtype)).stddev[0]
    k1, k2, d = a_mat.shape[0], a_mat.shape[1], w.shape[0]
    m = torch.zeros(k2 + k1 + d, k2 + k1 + d, dtype=dtype)  # (z2, z1, x) = mean + M eps
    m[:k2, :k2] = torch.eye(k2)
    m[k2 : k2 + k1, :k2] = a_mat
    m[k2 : k2 + k1, k2 : k2 + k1] = torch.diag(s1)
    m[k2 + k1 :] = w @ m[k2 : k2 + k1]
    m[k2 + k1 :, k2 + k1 :] += torch.diag(psi)
    mean = torch.cat([torch.zeros(k2, dtype=dtype), a_off, w @ a_off + b])
    return mean, m @ m.T


@torch.no_grad()
def _exact(vae, x):
    """log p(x_n), the posterior p(z1, z2 | x_n) and the guide's joint q(z1, z2 | x_n), all Gaussian."""
    mean, cov = _joint(vae, x.dtype)
    k1, k2 = vae.latent_dims
    order = torch.cat([torch.arange(k2, k2 + k1), torch.arange(k2)])  # z as (z1, z2), the guide's order
    zx = cov[order][:, k2 + k1 :]
    xx = cov[k2 + k1 :, k2 + k1 :]
    log_px = MultivariateNormal(mean[k2 + k1 :], xx).log_prob(x)
    gain = zx @ torch.linalg.inv(xx)
    post = MultivariateNormal(
        mean[order] + (x - mean[k2 + k1 :]) @ gain.T, cov[order][:, order] - gain @ zx.T
    )
    c_mat, c_off, r1 = _affine(vae.encoder[0])  # z1 = C x + c + r1 n1
    d_mat, d_off, r2 = _affine(vae.encoder[1])  # z2 = D z1 + d + r2 n2
    m1 = x @ c_mat.T + c_off
    q_mean = torch.cat([m1, m1 @ d_mat.T + d_off], -1)
    r1_cov = torch.diag(r1**2)
    q_cov = torch.cat(
        [
            torch.cat([r1_cov, r1_cov @ d_mat.T], 1),
            torch.cat([d_mat @ r1_cov, d_mat @ r1_cov @ d_mat.T + torch.diag(r2**2)], 1),
        ]
    )
    q = MultivariateNormal(q_mean, q_cov)
    return log_px, post, q


def test_linear_hierarchical_vae_has_the_exact_elbo():
    vae = _linear_vae()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_px, post, q = _exact(vae, x)
    gap = kl_divergence(q, post)
    exact_elbo = log_px - gap
    assert (gap > 0.05).all()
    el = elbo(vae.model, vae.guide, x, num_particles=3000, return_error=True)
    assert ((el.value - exact_elbo).abs() < 4 * el.standard_error).all()


def _set_guide_to_posterior(vae):
    """With one unit per layer, p(z1, z2 | x) = p(z1 | x) p(z2 | z1) (x depends on z2 only
    through z1), each Gaussian with a constant variance: the bottom-up guide holds it."""
    from pyro_vae.priors.learned_normal import inverse_softplus

    mean, cov = _joint(vae, torch.float64)  # (z2, z1, x)
    gain1 = cov[1:2, 2:] @ torch.linalg.inv(cov[2:, 2:])
    var1 = cov[1, 1] - (gain1 @ cov[2:, 1:2]).squeeze()
    gain2 = cov[0, 1] / cov[1, 1]
    var2 = cov[0, 0] - gain2 * cov[1, 0]
    with torch.no_grad():
        for net, weight, offset, var in (
            (vae.encoder[0], gain1, mean[1] - gain1 @ mean[2:], var1),
            (vae.encoder[1], gain2.reshape(1, 1), mean[0] - gain2 * mean[1], var2),
        ):
            net.net[-1].weight[:1] = weight
            net.net[-1].bias[:1] = offset
            net.net[-1].bias[1:] = inverse_softplus(var.sqrt() - net.min_scale)


def test_with_the_exact_posterior_as_guide_every_bound_is_log_p_x():
    vae = _linear_vae(seed=3, k1=1, k2=1)
    _set_guide_to_posterior(vae)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_px, post, q = _exact(vae, x)
    torch.testing.assert_close(kl_divergence(q, post), torch.zeros(5, dtype=torch.float64), atol=1e-9, rtol=0)
    for value in (
        elbo(vae.model, vae.guide, x, num_particles=3),
        iwae(vae.model, vae.guide, x, num_particles=7),
        log_marginal(vae.model, vae.guide, x, num_particles=20).value,
    ):
        torch.testing.assert_close(value, log_px, atol=1e-8, rtol=0)
    with torch.no_grad():  # move the guide away: the ELBO gap is then KL(q || p(z | x))
        vae.encoder[0].net[-1].bias[:1] += 0.5
        vae.encoder[1].net[-1].bias[1:] -= 0.5
    log_px, post, q = _exact(vae, x)
    g = elbo_gap(vae.model, vae.guide, x, num_particles=4000, elbo_particles=3000).gap
    assert ((g.value - kl_divergence(q, post)).abs() < 4 * g.standard_error + 2e-3).all()


def test_mean_field_elbo_is_unbiased_on_the_bottom_up_guide(monkeypatch):
    """The training loss averages to the exact ELBO; closed-form KL at z1 given a z2 drawn
    after it (what TraceMeanField_ELBO would use) is biased, and this test sees the bias."""
    vae = _linear_vae()
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_px, post, q = _exact(vae, x)
    exact = (log_px - kl_divergence(q, post)).sum()

    def losses():
        return torch.tensor(
            [MeanFieldELBO(num_particles=100).loss(vae.model, vae.guide, x) for _ in range(30)]
        )

    right = losses()
    assert abs(-right.mean() - exact) < 4 * standard_error(right)
    monkeypatch.setattr(terms, "_kl_in_order", lambda model_sites, guide_sites: set(model_sites))
    wrong = losses()
    assert abs(-wrong.mean() - exact) > 6 * standard_error(wrong)


def test_kl_and_active_units_per_layer_in_closed_form():
    """z1: Var_x E[z1|x] = Var_x(Cx + c) exactly. z2: E[z2|x] = D E[z1|x] + d, estimated over
    guide draws; its KL per dimension against N(0, 1) at one draw of z1 has expectation
    1/2 (E m^2 + r2^2 - 1 - log r2^2), m ~ N(D m1 + d, D R1 D^T)."""
    vae = _linear_vae(k1=3, k2=2)
    n = 400
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        c_mat, c_off, r1 = _affine(vae.encoder[0])
        d_mat, d_off, r2 = _affine(vae.encoder[1])
        m1 = x @ c_mat.T + c_off
        mu2 = m1 @ d_mat.T + d_off
        v2 = (d_mat**2) @ r1**2  # Var(D z1 | x) per dimension
    samples = 100
    au = active_units_per_site(vae.guide, x, num_samples=samples)
    assert list(au) == ["z1", "z2"]
    torch.testing.assert_close(au["z1"].variance, m1.var(0))
    noise = v2 / samples  # the variance of each datapoint's estimated mean, corrected for
    tolerance = 8 * (mu2.var(0) * noise / n).sqrt() + 4 * noise * (2 / n) ** 0.5
    assert ((au["z2"].variance - mu2.var(0)).abs() < tolerance).all()
    kl = kl_per_site(vae.model, vae.guide, x)
    assert list(kl) == ["z1", "z2"] and kl["z1"].shape == (3,)
    expected = 0.5 * (mu2**2 + v2 + r2**2 - 1 - torch.log(r2**2)).mean(0)
    se = (0.25 * (4 * mu2**2 * v2 + 2 * v2**2)).mean(0).sqrt() / n**0.5
    assert ((kl["z2"] - expected).abs() < 4 * se).all()


def test_tool_chain_fit_bounds_gap_and_per_layer_diagnostics():
    torch.manual_seed(0)
    x = (torch.rand(80, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    vae = HierarchicalVAE(Bernoulli(8), latent_dims=(4, 2), hidden=(16,))
    before = elbo(vae.model, vae.guide, x, num_particles=10).mean()
    result = fit(
        vae.model, vae.guide, x, validation=x[:20], epochs=10, batch_size=20, lr=1e-2, progress=False
    )
    assert torch.isfinite(torch.tensor(result.last("val_elbo")))
    el = elbo(vae.model, vae.guide, x, num_particles=10)
    assert el.mean() > before
    assert iwae(vae.model, vae.guide, x, num_particles=50).mean() > el.mean() - 0.05
    gap = elbo_gap(vae.model, vae.guide, x[:10], num_particles=200, elbo_particles=50).gap
    assert torch.isfinite(gap.value).all()
    au = active_units_per_site(vae.guide, x, num_samples=5)
    assert [a.variance.shape[0] for a in au.values()] == [4, 2]
    assert set(kl_per_site(vae.model, vae.guide, x)) == {"z1", "z2"}
    assert not any(k.startswith("hvae_encoder") for k in poutine.trace(vae.model).get_trace(x).param_nodes)
    assert pyro.get_param_store()  # fit trained the module parameters in the global store
