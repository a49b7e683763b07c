"""The default optimizer: fused Adam is the same update as PyTorch's for-loop Adam."""

import pyro
import torch

from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit
from pyro_vae.train.fused_adam import FusedAdam
from pyro_vae.train.optimizers import can_fuse, default_optimizer


def _params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(5, 3, generator=g, dtype=dtype).requires_grad_(),
        torch.randn(3, generator=g, dtype=dtype),
    ]


def test_fused_where_possible_and_default_otherwise():
    params = _params()
    assert can_fuse(params)
    assert isinstance(default_optimizer(params, lr=1e-3), FusedAdam)
    assert not can_fuse([])
    assert not can_fuse([torch.zeros(2, dtype=torch.float32), torch.zeros(2, device="meta")])
    assert not default_optimizer([torch.zeros(2, device="meta")], lr=1e-3).defaults["fused"]


def test_fused_adam_equals_for_loop_adam_over_steps():
    """Twenty steps on the same gradient sequence: same parameters to float rounding."""
    for dtype in (torch.float32, torch.float64):
        ours, ref = _params(dtype=dtype), [p.detach().clone().requires_grad_() for p in _params(dtype=dtype)]
        opt = default_optimizer(ours, lr=0.05)
        opt_ref = torch.optim.Adam(ref, lr=0.05, foreach=False)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            grads = [torch.randn(p.shape, generator=g, dtype=dtype) for p in ours]
            for p, q, gr in zip(ours, ref, grads, strict=True):
                p.grad, q.grad = gr.clone(), gr.clone()
            opt.step()
            opt_ref.step()
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        for p, q in zip(ours, ref, strict=True):
            torch.testing.assert_close(p, q, rtol=tol, atol=tol)


def test_fit_default_matches_explicit_for_loop_adam():
    """fit with its default (fused) optimizer trains to the parameters of fit with PyTorch's
    for-loop Adam, from the same seed and draws."""
    x = (torch.rand(32, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    states = []
    for optimizer in (None, lambda params: torch.optim.Adam(params, lr=1e-2, foreach=False)):
        torch.manual_seed(0)
        vae = VAE(Bernoulli(8), latent_dim=2, hidden=(4,))
        pyro.clear_param_store()
        fit(vae.model, vae.guide, x, epochs=2, batch_size=8, lr=1e-2, optimizer=optimizer, progress=False)
        states.append({k: v.detach().clone() for k, v in vae.state_dict().items()})
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-5, atol=1e-6)
