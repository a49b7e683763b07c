"""The figures' own arithmetic: the latent plot's principal components."""

import numpy as np
import pytest

from pyro_vae.plotting import plot_latent, principal_components


@pytest.mark.parametrize(
    ("dtype", "rows", "constant"),
    [(np.float64, 500, False), (np.float32, 500, False), (np.float64, 3, False), (np.float64, 200, True)],
    ids=["float64", "float32", "fewer-rows-than-columns", "a-constant-column"],
)
def test_principal_components_are_scikit_learns(dtype, rows, constant):
    """Projections and explained-variance fractions equal scikit-learn's ``PCA`` (the same
    signs), on correlated data with a mean away from zero."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    z = rng.normal(size=(rows, 6)) @ rng.normal(size=(6, 6)) + 3
    if constant:
        z[:, 2] = 1.5
    z = z.astype(dtype)
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


def test_image_mosaic_places_every_image_with_gaps_between():
    from pyro_vae.plotting import image_mosaic

    rows = [np.arange(12.0).reshape(2, 6), -np.arange(6.0).reshape(1, 6)]  # 2x3 images
    mosaic = image_mosaic(rows, (2, 3))
    assert mosaic.shape == (2 * 2 + 1, 2 * 3 + 1)
    np.testing.assert_array_equal(mosaic[0:2, 0:3], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(mosaic[0:2, 4:7], np.arange(6.0, 12.0).reshape(2, 3))
    np.testing.assert_array_equal(mosaic[3:5, 0:3], -np.arange(6.0).reshape(2, 3))
    assert np.isnan(mosaic[2]).all() and np.isnan(mosaic[:, 3]).all()  # the gaps
    assert np.isnan(mosaic[3:5, 4:7]).all()  # a shorter row leaves its end empty


def test_an_image_grid_is_its_mosaic_with_one_label_a_row(tmp_path, monkeypatch):
    import torch

    from pyro_vae import plotting

    shown = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: shown.append(fig) or path)
    x = torch.rand(10, 64, generator=torch.Generator().manual_seed(0))
    plotting.plot_reconstructions(x, x.flip(0), tmp_path / "recon.png", (8, 8))
    (ax,) = shown[0].axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input", "recon."]
    (image,) = ax.get_images()
    expected = plotting.image_mosaic([x.numpy(), x.flip(0).numpy()], (8, 8))
    np.testing.assert_array_equal(np.ma.filled(image.get_array(), np.nan), expected)
    assert ax.get_title().startswith("Reconstructions")


def test_image_figures_are_written(tmp_path):
    import torch

    from pyro_vae.plotting import plot_reconstructions, plot_samples

    x = torch.rand(10, 64, generator=torch.Generator().manual_seed(0))
    for path in (
        plot_reconstructions(x, x.flip(0), tmp_path / "recon.png", (8, 8)),
        plot_samples(x, tmp_path / "samples.png", (8, 8)),
    ):
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
