"""Figures of a training run, saved as PNG (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from pyro_vae._io import atomic_write


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    out = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return out


def plot_training_curves(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """ELBO, rate and distortion per epoch, training and validation; with a tracked held-out
    :math:`\\mathcal L_K` (``val_lk``), also L_K and the ELBO of the same draws on the ELBO
    panel and their gap in a fourth."""
    epochs = [h["epoch"] for h in history]
    tracked = [h for h in history if not math.isnan(h.get("val_lk", math.nan))]
    fig, axes = plt.subplots(1, 4 if tracked else 3, figsize=(17.5 if tracked else 13, 3.6))
    for ax, key, title in zip(
        axes[:3],
        ("elbo", "rate", "distortion"),
        ("ELBO (nats / datapoint)", "rate = KL(q(z|x) || p(z))", "distortion = -E log p(x|z)"),
        strict=True,
    ):
        for split, style in (("train", "-"), ("val", "--")):
            values = [h.get(f"{split}_{key}", math.nan) for h in history]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, style, label="train" if split == "train" else "validation")
        if key == "elbo":
            ax.plot(epochs, [h["train_objective"] for h in history], ":", color="grey", label="objective")
        if key == "elbo" and tracked:
            _tracked_bounds(ax, axes[3], tracked)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def _tracked_bounds(ax: plt.Axes, gap_ax: plt.Axes, tracked: Sequence[dict[str, float]]) -> None:
    """The tracked held-out ELBO and :math:`\\mathcal L_K` (error bars: 2 se) on ``ax``, their
    gap on ``gap_ax``."""
    at = [h["epoch"] for h in tracked]
    for key, label, color in (("val_lk_elbo", "ELBO (tracked)", "C3"), ("val_lk", "$L_K$ (tracked)", "C2")):
        ax.errorbar(
            at, [h[key] for h in tracked], yerr=[2 * h[f"{key}_se"] for h in tracked],
            marker="o", ms=3, capsize=2, color=color, label=label,
        )  # fmt: skip
    gap_ax.errorbar(
        at, [h["val_lk_gap"] for h in tracked], yerr=[2 * h["val_lk_gap_se"] for h in tracked],
        marker="o", ms=3, capsize=2, color="C4",
    )  # fmt: skip
    gap_ax.set_title("$L_K$ - ELBO (held out, ± 2 se)")
    gap_ax.set_xlabel("epoch")
    gap_ax.grid(alpha=0.3)


def image_mosaic(rows: Sequence[np.ndarray], shape: tuple[int, int], *, gap: int = 1) -> np.ndarray:
    """The images of ``rows`` (each an array of flattened images of ``shape``) tiled into one
    array, row by row, with ``gap`` pixels of NaN between them (drawn as background)."""
    h, w = shape
    n = max(len(images) for images in rows)
    mosaic = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap), np.nan)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            top, left = r * (h + gap), c * (w + gap)
            mosaic[top : top + h, left : left + w] = np.asarray(image, dtype=float).reshape(shape)
    return mosaic


def _image_grid(
    rows: Sequence[np.ndarray], shape: tuple[int, int], labels: Sequence[str], path: str | Path, title: str
) -> Path:
    """One image of the rows' images (:func:`image_mosaic`), each row labelled on the left: a
    single axes, where an axes per image made each of these figures take 0.3-0.4 s. The gaps
    are grey, so that images whose background is 0 (white) stay apart."""
    n = len(rows[0])
    h, _ = shape
    mosaic = image_mosaic(rows, shape)
    cmap = plt.get_cmap("gray_r").with_extremes(bad="0.6")
    width = n * 0.9
    fig, ax = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.4))
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(len(rows))], labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_reconstructions(
    x: torch.Tensor, recon: torch.Tensor, path: str | Path, image_shape: tuple[int, int] | None = None
) -> Path:
    """Inputs above their reconstructions (images), or inputs against reconstructions (scatter)."""
    x_np, r_np = x.detach().cpu().numpy(), recon.detach().cpu().numpy()
    if image_shape is not None:
        return _image_grid(
            [x_np, r_np], image_shape, ["input", "recon."], path, "Reconstructions (mean of p(x|z=E[z|x]))"
        )
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x_np.ravel(), r_np.ravel(), s=4, alpha=0.4)
    lim = [min(x_np.min(), r_np.min()), max(x_np.max(), r_np.max())]
    ax.plot(lim, lim, color="grey", lw=1)
    ax.set_xlabel("input value")
    ax.set_ylabel("reconstruction mean")
    ax.set_title("Reconstructions")
    return save_figure(fig, path)


def plot_samples(samples: torch.Tensor, path: str | Path, image_shape: tuple[int, int] | None = None) -> Path:
    """Means of p(x|z) for z drawn from the prior."""
    s = samples.detach().cpu().numpy()
    if image_shape is not None:
        per_row = min(len(s), 10)
        rows = [s[i : i + per_row] for i in range(0, len(s) - per_row + 1, per_row)]
        return _image_grid(
            rows, image_shape, [""] * len(rows), path, "Samples from the prior (means of p(x|z))"
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    im = ax.imshow(s, aspect="auto", cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("feature")
    ax.set_ylabel("sample")
    ax.set_title("Samples from the prior (means of p(x|z))")
    return save_figure(fig, path)


def principal_components(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``z`` projected on its first ``k`` principal components, and the fraction
    of the variance each of those explains: the singular value decomposition of the
    centred data, each component's sign set so that its largest entry is positive (as
    scikit-learn's ``PCA`` sets it; without importing scikit-learn and SciPy, 0.8 s)."""
    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    variance = s**2
    return centred @ vt[:k].T, variance[:k] / variance.sum()


def plot_latent(z: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """Encoder means in 2-D: the latent itself when K <= 2, else its first two principal components."""
    z_np = z.detach().cpu().numpy()
    if z_np.shape[1] > 2:
        z2, var = principal_components(z_np, 2)
        xlabel, ylabel = f"PC 1 ({var[0]:.0%})", f"PC 2 ({var[1]:.0%})"
    else:
        z2 = np.pad(z_np, ((0, 0), (0, 2 - z_np.shape[1])))
        xlabel, ylabel = "z[0]", "z[1]" if z_np.shape[1] > 1 else ""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if labels is not None:
        sc = ax.scatter(z2[:, 0], z2[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=6)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(z2[:, 0], z2[:, 1], s=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Latent means E[z | x]")
    return save_figure(fig, path)


def plot_bound_vs_k(
    ks: Sequence[int],
    values: Sequence[float],
    errors: Sequence[float],
    path: str | Path,
    *,
    elbo: float,
    log_marginal: float,
    ais: float | None = None,
    exact: float | None = None,
) -> Path:
    """Mean :math:`\\mathcal L_K` against :math:`K` (log axis), with ELBO and :math:`\\log \\hat p` lines
    (and, when given, the AIS estimate and the exact :math:`\\log p(x)`)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ks, values, yerr=errors, marker="o", capsize=3, label="$L_K$ (mean over data)")
    ax.axhline(elbo, color="C1", ls="--", label="ELBO")
    ax.axhline(log_marginal, color="C2", ls=":", label=r"$\log \hat p(x)$")
    if ais is not None:
        ax.axhline(ais, color="C3", ls="-.", label="AIS")
    if exact is not None:
        ax.axhline(exact, color="k", ls="-", lw=0.8, label=r"exact $\log p(x)$")
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples)")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("Importance-weighted bounds")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_k_hat(k_hat: torch.Tensor, path: str | Path) -> Path:
    """Histogram of PSIS :math:`\\hat k` with the 0.5 and 0.7 thresholds."""
    k = k_hat.detach().cpu().numpy()
    k = k[np.isfinite(k)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(k, bins=30)
    for t, c in ((0.5, "C1"), (0.7, "C3")):
        ax.axvline(t, color=c, ls="--", label=f"k = {t}")
    ax.set_xlabel(r"Pareto $\hat k$ of the importance weights")
    ax.set_ylabel("datapoints")
    ax.legend()
    return save_figure(fig, path)


def plot_kl_per_dimension(kl: torch.Tensor, path: str | Path) -> Path:
    """Bar chart of the KL to the prior per latent dimension (near 0: collapsed)."""
    v = kl.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(v) + 2), 3.5))
    ax.bar(range(len(v)), v)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL(q(z_j|x) || p(z_j)) [nats]")
    ax.set_title("KL per latent dimension")
    return save_figure(fig, path)


def plot_gradient_variance(rows: Sequence[dict], path: str | Path, *, point: str = "initial") -> Path:
    """Gradient variance (log scale) and SNR per estimator, one bar per parameter group, at
    the ``point`` (``"initial"`` or ``"trained"``) parameters."""
    rows = [r for r in rows if r.get("point", "initial") == point]
    names = list(dict.fromkeys(r["estimator"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / max(len(groups), 1)
    for ax, key, title in zip(
        axes,
        ("variance", "snr"),
        (f"gradient variance, tr Cov (log scale), {point} parameters", "SNR = |E g| / sqrt(tr Cov)"),
        strict=True,
    ):
        drawn = False
        for i, group in enumerate(groups):
            values = [
                next((r[key] for r in rows if r["estimator"] == n and r["group"] == group), math.nan)
                for n in names
            ]
            # exact estimators have zero variance (infinite SNR): no bar on a log scale
            keep = [j for j, v in enumerate(values) if 0 < v < math.inf]
            offset = (i - (len(groups) - 1) / 2) * width
            ax.bar([j + offset for j in keep], [values[j] for j in keep], width, label=group, color=f"C{i}")
            drawn = drawn or bool(keep)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
        if drawn:
            ax.set_yscale("log")
        else:  # only exact estimators: zero variance, infinite SNR
            ax.text(0.5, 0.5, "exact: zero variance", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(title="parameters")
    return save_figure(fig, path)


def plot_estimator_curves(histories: dict[str, Sequence[dict[str, float]]], path: str | Path) -> Path:
    """Held-out (solid) and training (dashed) ELBO per epoch for each estimator."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i % 10}"
        steps = [h["step"] for h in history]
        val = [h.get("val_elbo", math.nan) for h in history]
        has_val = not all(math.isnan(v) for v in val)
        if has_val:
            ax.plot(steps, val, "-", color=color, label=name)
        train = [h.get("train_elbo", math.nan) for h in history]
        ax.plot(steps, train, "--", color=color, alpha=0.6, label=None if has_val else name)
    values = [
        h.get(key, math.nan)
        for hs in histories.values()
        for h in hs[len(hs) // 20 :]
        for key in ("val_elbo", "train_elbo")
    ]
    finite = [v for v in values if math.isfinite(v)]
    if finite:  # leave out the first few epochs' steep climb, which would flatten the rest
        low, high = min(finite), max(finite)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ELBO (nats / datapoint)")
    ax.set_title("training curves: held-out (solid), training (dashed)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_imputations(
    x: torch.Tensor,
    mask: torch.Tensor,
    samples: torch.Tensor,
    mean: torch.Tensor,
    path: str | Path,
    image_shape: tuple[int, int],
    *,
    num_draws: int = 3,
) -> Path:
    """Images with missing pixels: the observed part (missing pixels mid-grey), ``num_draws``
    imputations (draws from :math:`p(x_{\\mathrm{miss}} \\mid x_{\\mathrm{obs}})`), the
    posterior-predictive mean, and the truth, one column per image."""
    observed = torch.where(mask > 0.5, x, torch.full_like(x, 0.5))
    rows = [observed, *samples[:num_draws], mean, x]
    labels = ["observed", *(f"draw {i + 1}" for i in range(min(num_draws, len(samples)))), "mean", "truth"]
    arrays = [r.detach().cpu().numpy() for r in rows]
    return _image_grid(arrays, image_shape, labels, path, "Imputations of the missing pixels")


def plot_rate_distortion(rows: Sequence[dict], path: str | Path) -> Path:
    """Runs in the rate-distortion plane [1]: rate :math:`R` across, distortion :math:`D` up,
    ± 2 standard errors, each labelled with its :math:`\\beta`, over the iso-ELBO diagonals
    :math:`R + D = -\\mathrm{ELBO}` (grey; the ELBO is higher toward the origin).

    References:
        [1] Alemi et al. (2018), "Fixing a broken ELBO", ICML.
    """
    rate = np.array([r["rate"] for r in rows], dtype=float)
    dist = np.array([r["distortion"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4.8))
    total = rate + dist
    r_hi = max(rate.max() * 1.15, 1.0)
    d_lo, d_hi = min(dist.min(), (total - r_hi).min()), dist.max() * 1.05 + 1.0
    span = r_hi + d_hi - d_lo  # the values of R + D the plot shows
    step = next(m * 10**e for e in range(-3, 6) for m in (1, 2, 5) if m * 10**e >= span / 8)
    grid_r = np.array([0.0, r_hi])
    for c in np.arange(math.ceil(d_lo / step), math.floor((r_hi + d_hi) / step) + 1) * step:
        ax.plot(grid_r, c - grid_r, color="grey", lw=0.6, alpha=0.5)
        if d_lo < c - r_hi * 0.98 < d_hi:
            ax.annotate(f"{-c:g}", (r_hi * 0.98, c - r_hi * 0.98), fontsize=7, color="grey", ha="right")
    for c in total:
        ax.plot(grid_r, c - grid_r, color="C0", lw=0.6, ls=":", alpha=0.6)
    ax.errorbar(
        rate, dist, xerr=[2 * r["rate_se"] for r in rows], yerr=[2 * r["distortion_se"] for r in rows],
        fmt="o", capsize=3, color="C3",
    )  # fmt: skip
    for r in rows:
        ax.annotate(
            f"β={r['beta']:g}", (r["rate"], r["distortion"]), textcoords="offset points", xytext=(5, 5)
        )
    ax.set_xlim(0, r_hi)
    ax.set_ylim(max(d_lo - 0.05 * (d_hi - d_lo), 0.0), d_hi)
    ax.set_xlabel("rate R = E KL(q(z|x) || p(z)) [nats]")
    ax.set_ylabel("distortion D = -E log p(x|z) [nats]")
    ax.set_title("rate-distortion plane (diagonals: ELBO = -(R + D))")
    ax.grid(alpha=0.2)
    return save_figure(fig, path)


def plot_collapse(panel: dict, path: str | Path) -> Path:
    """The posterior-collapse panel: the average KL split by ELBO surgery into
    :math:`I(n; z)` and the marginal KL (± 2 se, with :math:`\\log N`), and the KL per
    latent dimension, active units filled, inactive ones hollow."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    names = ["average KL", "I(n; z)", "KL(q(z)||p(z))"]
    keys = ["average_kl", "mutual_information", "marginal_kl"]
    left.bar(
        names, [panel[k] for k in keys], yerr=[2 * panel[f"{k}_se"] for k in keys],
        capsize=3, color=["C0", "C1", "C2"],
    )  # fmt: skip
    left.axhline(
        panel["log_num_data"], color="grey", ls="--", lw=1, label=f"log N = {panel['log_num_data']:.2f}"
    )
    left.set_ylabel("nats")
    left.set_title("ELBO surgery")
    left.legend()
    active = np.asarray(panel["active"], dtype=bool)
    if panel["kl_per_dimension"] is None:  # a mixture prior or a flow posterior: no closed form
        right.text(0.5, 0.5, "no closed-form KL per dimension", ha="center", va="center")
        right.set_title(f"{int(active.sum())} of {len(active)} active units")
        right.set_axis_off()
        return save_figure(fig, path)
    kl = np.asarray(panel["kl_per_dimension"], dtype=float)
    x = np.arange(len(kl))
    right.bar(x[active], kl[active], color="C0", label="active")
    right.bar(x[~active], kl[~active], color="white", edgecolor="C0", label="inactive")
    right.set_xlabel("latent dimension")
    right.set_ylabel("KL(q(z_j|x) || p(z_j)) [nats]")
    right.set_title(f"KL per dimension: {int(active.sum())} of {len(kl)} active units")
    right.legend()
    return save_figure(fig, path)
