"""Small building blocks shared by the corpus programs: seeded construction, the
networks Pyro's examples use (an MLP encoder with ``exp`` scales as in ``vae.py``, a
softmax classifier as in ``ss_vae_M2.py``), a linear-Gaussian decoder whose marginal
likelihood has a closed form, and deterministic data generators.

Only ``torch`` and ``pyro`` are used here: the corpus must not depend on ``pyro_vae``.
"""

import contextlib
import math

import pyro.distributions as dist
import torch
from torch import nn


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block (typically module construction) under ``torch.manual_seed(seed)``
    without disturbing the caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Encoder(nn.Module):
    """x -> (loc, scale) of a diagonal Gaussian, the encoder of Pyro's ``vae.py``."""

    def __init__(self, in_dim: int, hidden_dim: int, z_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()
        # a reasonable (not exact) initial guide: modest means, scales near 0.6
        with torch.no_grad():
            self.fc21.weight.mul_(0.3)
            self.fc22.weight.mul_(0.1)
            self.fc22.bias.fill_(math.log(0.6))

    def forward(self, x):
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Classifier(nn.Module):
    """x -> class probabilities, the ``encoder_y`` of Pyro's ``ss_vae_M2.py``."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, num_classes)
        )

    def forward(self, x):
        return torch.softmax(self.net(x), dim=-1)


class LinearGaussianDecoder(nn.Module):
    """z -> (W z + b, psi^(1/2)): with z ~ N(0, I) the marginal is N(b, W W^T + diag psi)."""

    def __init__(self, z_dim: int, x_dim: int, init_scale: float = 0.7):
        super().__init__()
        self.linear = nn.Linear(z_dim, x_dim)
        self.log_scale = nn.Parameter(torch.full((x_dim,), math.log(init_scale)))

    def forward(self, z):
        loc = self.linear(z)
        return loc, self.log_scale.exp().expand(loc.shape)

    def marginal(self, latent_cov=None) -> dist.MultivariateNormal:
        """p(x) when z ~ N(0, latent_cov) (identity by default)."""
        w = self.linear.weight
        cov_z = torch.eye(w.shape[1], dtype=w.dtype, device=w.device) if latent_cov is None else latent_cov
        cov = w @ cov_z @ w.T + torch.diag(self.log_scale.exp() ** 2)
        return dist.MultivariateNormal(self.linear.bias, covariance_matrix=cov)

    def log_marginal(self, x):
        return self.marginal().log_prob(x)


def linear_gaussian_data(n: int, seed: int, x_dim: int = 4, z_dim: int = 2, noise: float = 0.6):
    """n rows of x = W z + b + noise from a fixed random linear-Gaussian model (float64), on
    the scale of the corpus' freshly initialised decoders."""
    g = torch.Generator().manual_seed(seed)
    w = 0.6 * torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(x_dim, generator=g, dtype=torch.float64)
    z = torch.randn(n, z_dim, generator=g, dtype=torch.float64)
    eps = torch.randn(n, x_dim, generator=g, dtype=torch.float64)
    return z @ w.T + b + noise * eps


def mixture_data(n: int, seed: int, x_dim: int = 3, num_classes: int = 3, spread: float = 1.5):
    """n rows from a Gaussian mixture with unit-variance components and one-hot labels."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(num_classes, x_dim, generator=g, dtype=torch.float64)
    y = torch.randint(num_classes, (n,), generator=g)
    x = means[y] + torch.randn(n, x_dim, generator=g, dtype=torch.float64)
    return x, nn.functional.one_hot(y, num_classes).to(torch.float64)
