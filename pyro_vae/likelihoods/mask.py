"""Per-feature missingness masks on a likelihood's distribution."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch_distribution import MaskedDistribution
from torch.distributions import Independent

from pyro_vae.errors import InputError


def mask_features(fn: TorchDistribution, mask: torch.Tensor) -> TorchDistribution:
    """``fn`` (event shape ``(D,)``, independent features) with the features where ``mask`` is
    0 left out of the density: :math:`\\log p(x_{\\mathrm{obs}} \\mid z) = \\sum_d m_d \\log p(x_d \\mid z)`,
    the likelihood of the observed features only, the missing ones marginalized (they are
    independent given :math:`z`). Sampling and the mean still give every feature, which is
    what imputation draws from.

    It is Pyro's own ``Distribution.mask`` on the per-feature distribution, then
    ``to_event(1)``: ``Independent(MaskedDistribution(base, mask), 1)``; the values at the
    missing features must lie in the support (zero-filled, say) and are otherwise ignored.

    :param mask: observed = 1 (or ``True``), shape ``(B, D)`` or broadcastable to the
        per-feature batch shape.
    """
    if not isinstance(fn, Independent) or fn.reinterpreted_batch_ndims != 1:
        raise InputError(
            f"a per-feature mask needs a distribution of independent features "
            f"(Independent(..., 1)), got {type(fn).__name__}"
        )
    base = fn.base_dist
    observed = mask if mask.dtype == torch.bool else mask > 0.5
    try:
        torch.broadcast_shapes(observed.shape, base.batch_shape)
    except RuntimeError:
        raise InputError(
            f"the mask has shape {tuple(observed.shape)}, which does not broadcast with the "
            f"likelihood's per-feature shape {tuple(base.batch_shape)}; "
            f"pass one row of {base.batch_shape[-1]} flags per datapoint"
        ) from None
    return MaskedDistribution(base, observed).to_event(1)
