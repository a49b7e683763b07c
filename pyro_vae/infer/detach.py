"""Copies of distributions with their parameters cut from the autograd graph."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, Independent, MultivariateNormal


def detach_distribution(fn: Distribution) -> Distribution:
    """The same distribution with every parameter ``.detach()`` ed, so that
    ``detach_distribution(q).log_prob(z)`` keeps the gradient through ``z`` but none through
    ``q``'s parameters (the "stop gradient" of STL and DReG estimators).

    Supports ``Independent`` (recursively), ``MultivariateNormal`` and any distribution whose
    constructor takes its ``arg_constraints`` parameters by name (Normal, LogNormal, Gamma,
    Beta, Laplace, StudentT, ...).
    """
    if isinstance(fn, Independent):
        return dist.Independent(detach_distribution(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, MultivariateNormal):
        return dist.MultivariateNormal(fn.loc.detach(), scale_tril=fn.scale_tril.detach())
    present = {k: v for k, v in vars(fn).items() if k in fn.arg_constraints and isinstance(v, torch.Tensor)}
    if "probs" in present and "logits" in present:
        present.pop("probs")
    try:
        return type(fn)(**{k: v.detach() for k, v in present.items()}, validate_args=False)
    except (TypeError, ValueError) as e:
        raise NotImplementedError(f"cannot detach the parameters of {type(fn).__name__}: {e}") from e
