import pytest
import torch

from pyro_vae.comparison.gradients import parameter_groups
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import BernoulliLatent, CategoricalLatent, DiscreteVAE


def tiny_vae(latent: str = "categorical", *, seed: int = 0) -> DiscreteVAE:
    """A float64 discrete VAE small enough to enumerate: 2 x 3 categories (9 codes) or 3 bits (8)."""
    torch.manual_seed(seed)
    code = CategoricalLatent(2, 3) if latent == "categorical" else BernoulliLatent(3)
    return DiscreteVAE(Bernoulli(6), code, hidden=(8,)).double()


def tiny_data(n: int = 4, *, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 6, generator=gen, dtype=torch.float64) < 0.4).double()


@pytest.fixture(params=["categorical", "bernoulli"])
def program(request):
    vae = tiny_vae(request.param)
    x = tiny_data()
    groups = parameter_groups(vae.model, vae.guide, x)
    return vae, x, groups


def collect(model, guide, x, *, loss, num_samples, groups):
    """All gradient estimates of the objective, ``{group: (S, P)}``."""
    from pyro_vae.comparison.gradients import gradient_samples

    samples = list(gradient_samples(model, guide, x, loss=loss, num_samples=num_samples, groups=groups))
    return {g: torch.stack([s[g] for s in samples]) for g in groups}


def projection_z_scores(
    samples: torch.Tensor, exact: torch.Tensor, *, num_directions: int = 3
) -> torch.Tensor:
    """(mean - exact) . v / se for v = exact / |exact| and fixed random unit directions."""
    gen = torch.Generator().manual_seed(123)
    dirs = [exact / exact.norm()] + [
        (v := torch.randn(exact.shape, generator=gen, dtype=exact.dtype)) / v.norm()
        for _ in range(num_directions - 1)
    ]
    z = []
    for v in dirs:
        proj = samples @ v
        se = proj.std() / proj.shape[0] ** 0.5
        z.append((proj.mean() - exact @ v) / se)
    return torch.stack(z)


def total_variance(samples: torch.Tensor) -> float:
    return samples.var(0).sum().item()
