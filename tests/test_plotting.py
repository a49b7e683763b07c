"""The figures' own arithmetic: the latent plot's principal components."""

import numpy as np
import pytest

from pyro_vae.plotting import plot_latent, principal_components


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_principal_components_are_scikit_learns(dtype):
    """Projections and explained-variance fractions equal scikit-learn's ``PCA`` (the same
    signs), on correlated data with a mean away from zero."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    z = (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3).astype(dtype)
    ours, ratio = principal_components(z, 2)
    pca = PCA(n_components=2).fit(z)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(ours, pca.transform(z), atol=tol * np.abs(ours).max())
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, atol=tol)
    assert ratio[0] >= ratio[1] and ratio.sum() <= 1


def test_the_latent_plot_of_more_than_two_dimensions(tmp_path):
    import torch

    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    path = plot_latent(z, tmp_path / "latent.png", labels=torch.arange(50) % 3)
    assert path.is_file() and path.stat().st_size > 0
