"""Per-datapoint log densities of a particle-vectorized model/guide pair, with gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.subsample_messenger import _Subsample

from pyro_vae._checks import check_positive_int
from pyro_vae.infer.per_datapoint import data_frame, max_plate_nesting, particle_traces, site_terms


@dataclass(frozen=True)
class ParticleTerms:
    """``K`` particles for each datapoint of a batch of ``B`` (all tensors ``(K, B)``).

    :ivar log_p: :math:`\\log p(x_n, z_{kn})` (auxiliary sites left out).
    :ivar log_q: :math:`\\log q(z_{kn} \\mid x_n)`, all guide sites.
    :ivar log_q_score: the part of ``log_q`` from sites without ``rsample`` (discrete
        latents), whose gradient needs a score-function term; ``None`` when there is none.
    :ivar auxiliary: the scaled auxiliary terms (:data:`~pyro_vae.infer.per_datapoint.AUXILIARY`),
        summed over the batch and averaged over particles: a scalar to add to the objective.
    :ivar scale: :math:`N / B` of the data plate.
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    log_q_score: torch.Tensor | None
    auxiliary: torch.Tensor | float
    scale: float

    @property
    def log_weight(self) -> torch.Tensor:
        return self.log_p - self.log_q


def _score_log_prob(site: dict) -> torch.Tensor:
    fn = site["fn"]
    if fn.has_rsample:
        return torch.zeros((), dtype=site["value"].dtype if site["value"].is_floating_point() else None)
    return fn.log_prob(site["value"])


def _scaled_log_prob(site: dict) -> torch.Tensor:
    return scale_and_mask(site["fn"].log_prob(site["value"]), scale=site["scale"])


def has_score_sites(trace: object) -> bool:
    """Whether a guide trace has latent sites without ``rsample``."""
    return any(
        site["type"] == "sample"
        and not site["is_observed"]
        and not isinstance(site["fn"], _Subsample)
        and not site["fn"].has_rsample
        for site in trace.nodes.values()  # type: ignore[attr-defined]
    )


def particle_terms(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    nesting: int,
    plate_name: str,
) -> ParticleTerms:
    """Trace ``num_particles`` draws per datapoint (one vectorized pass) and collect
    :class:`ParticleTerms`."""
    model_trace, guide_trace = particle_traces(model, guide, args, kwargs, num_particles, nesting)
    frame = data_frame(model_trace, plate_name)
    common = (plate_name, frame.dim, frame.size, num_particles, nesting + 1)
    log_p = site_terms(model_trace, *common, observed=None)
    log_q = site_terms(guide_trace, *common, observed=None)
    log_q_score = (
        site_terms(guide_trace, *common, observed=None, log_prob=_score_log_prob)
        if has_score_sites(guide_trace)
        else None
    )
    aux = site_terms(model_trace, *common, observed=True, log_prob=_scaled_log_prob, auxiliary=True)
    assert log_p is not None
    return ParticleTerms(
        log_p=log_p,
        log_q=log_q if log_q is not None else torch.zeros_like(log_p),
        log_q_score=log_q_score,
        auxiliary=aux.sum() / num_particles if aux is not None else 0.0,
        scale=(frame.full_size or frame.size) / frame.size,
    )


class ParticleELBO(ELBO):
    """Base of pyro_vae's estimators: a Pyro loss that traces all particles at once.

    Subclasses implement :meth:`surrogate`, returning the objective's value (to be maximized)
    and a surrogate with the same value whose gradient is the estimator. ``loss``,
    ``differentiable_loss`` and ``loss_and_grads`` then behave as in Pyro's ELBOs, so the
    estimator works with :class:`pyro.infer.SVI` and :func:`~pyro_vae.train.fit`.
    """

    def __init__(self, *, num_particles: int = 1, plate_name: str = "data") -> None:
        check_positive_int(num_particles, "num_particles")
        super().__init__(num_particles=num_particles)
        self.plate_name = plate_name
        self._nesting: int | None = None

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError(f"{type(self).__name__} traces all particles at once")

    def terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> ParticleTerms:
        if self._nesting is None:
            self._nesting = max_plate_nesting(model, guide, *args, **kwargs)
        return particle_terms(
            model,
            guide,
            args,
            kwargs,
            num_particles=self.num_particles,
            nesting=self._nesting,
            plate_name=self.plate_name,
        )

    def surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, surrogate)``: the estimate of the objective and a scalar whose gradient
        is the estimator's gradient of it (it may include baseline-training terms)."""
        raise NotImplementedError

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The negated surrogate (its gradient is the estimator's)."""
        return -self.surrogate(model, guide, args, kwargs)[1]

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negated estimate of the objective."""
        with torch.no_grad():
            return -float(self.surrogate(model, guide, args, kwargs)[0])

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Backpropagate the negated surrogate; return the negated objective estimate."""
        objective, surrogate = self.surrogate(model, guide, args, kwargs)
        if surrogate.requires_grad:
            (-surrogate).backward()
        return -float(objective.detach())
