"""Per-datapoint log densities of a particle-vectorized model/guide pair, with gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.runtime import Message
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import Categorical, Distribution, Independent, OneHotCategorical

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.mean_field_elbo import _Sites
from pyro_vae.infer.per_datapoint import (
    check_in_plate,
    is_auxiliary,
    max_plate_nesting,
    plate_frame,
    reduce_to_datapoints,
    with_particles,
)


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


_KEYS = ("fn", "value", "scale", "mask", "is_observed", "infer", "cond_indep_stack")


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel draws :math:`-\\log(-\\log U)`, :math:`U \\sim \\mathcal U(0, 1)` clamped
    away from 0 (``torch.rand`` is several times faster than ``exponential_`` on CPU)."""
    u = torch.rand_like(like).clamp_(min=torch.finfo(like.dtype).tiny)
    return -(-u.log()).log()


def gumbel_max_sample(fn: Distribution) -> torch.Tensor | None:
    """A draw from a ``Categorical`` or ``OneHotCategorical`` site (possibly inside
    ``Independent``) by the Gumbel-max trick, :math:`\\arg\\max_i(\\alpha_i + g_i)` with
    :math:`g_i` standard Gumbel (:func:`gumbel_noise`): exactly the categorical
    distribution, in a few vectorized operations (``torch.multinomial`` costs a call per row,
    which dominates when a particle plate has expanded the distribution); ``None`` for
    other distributions."""
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, Categorical | OneHotCategorical):
        return None
    logits = base.logits
    index = (logits + gumbel_noise(logits)).argmax(-1)
    if isinstance(base, Categorical):
        return index
    return torch.nn.functional.one_hot(index, logits.shape[-1]).to(logits)


class _Record(_Sites):
    """Records the sample sites of one run with the fields :func:`particle_terms` needs
    (not a full Pyro trace) and optionally replays latent values from another record. With
    ``gumbel_max``, categorical latent sites are drawn by :func:`gumbel_max_sample`."""

    def __init__(self, replay: dict[str, dict] | None = None, *, gumbel_max: bool = False) -> None:
        super().__init__(replay)  # type: ignore[arg-type]
        self.gumbel_max = gumbel_max

    def _pyro_sample(self, msg: Message) -> None:
        super()._pyro_sample(msg)
        if self.gumbel_max and not (msg["done"] or msg["is_observed"] or isinstance(msg["fn"], _Subsample)):
            value = gumbel_max_sample(msg["fn"])
            if value is not None:
                msg["value"] = value
                msg["done"] = True

    @staticmethod
    def _entry(msg: Message) -> dict:
        return {k: msg[k] for k in _KEYS}  # type: ignore[literal-required]

    @staticmethod
    def _value(site: Any) -> torch.Tensor:
        return site["value"]


def record_particles(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int, nesting: int
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Sites of the guide and of the replayed model with ``num_particles`` draws in a plate
    at ``dim = -(nesting + 1)``; gradients flow as in the program. With several particles,
    categorical guide sites are drawn by the Gumbel-max trick (the same distribution; one
    particle keeps the distribution's own sampler, so the draws match Pyro's ELBOs)."""
    with poutine.block(hide_types=["sample"]):  # parameters stay visible to SVI's param capture
        with _Record(gumbel_max=num_particles > 1) as g:
            with_particles(guide, num_particles, nesting)(*args, **kwargs)
        with _Record(replay=g.sites) as m:
            with_particles(model, num_particles, nesting)(*args, **kwargs)
    return m.sites, g.sites


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
    """Run ``num_particles`` draws per datapoint (one vectorized pass) and collect
    :class:`ParticleTerms`, computing each site's log-density once."""
    model_sites, guide_sites = record_particles(model, guide, args, kwargs, num_particles, nesting)
    frame = plate_frame(model_sites.values(), plate_name)
    shape = (frame.dim, frame.size, num_particles, nesting + 1)
    log_p: torch.Tensor | float = 0.0
    aux: torch.Tensor | float = 0.0
    for name, site in model_sites.items():
        check_in_plate(name, site, plate_name)
        if is_auxiliary(site):
            aux = aux + reduce_to_datapoints(_scaled_log_prob(site), site["mask"], *shape).sum()
        else:
            log_p = log_p + reduce_to_datapoints(site["fn"].log_prob(site["value"]), site["mask"], *shape)
    log_q: torch.Tensor | float = 0.0
    log_q_score: torch.Tensor | None = None
    for name, site in guide_sites.items():
        check_in_plate(name, site, plate_name)
        lp = reduce_to_datapoints(site["fn"].log_prob(site["value"]), site["mask"], *shape)
        log_q = log_q + lp
        if not site["fn"].has_rsample:
            log_q_score = lp if log_q_score is None else log_q_score + lp
    if not isinstance(log_p, torch.Tensor):
        raise InputError("the model has no sample sites")
    return ParticleTerms(
        log_p=log_p,
        log_q=log_q if isinstance(log_q, torch.Tensor) else torch.zeros_like(log_p),
        log_q_score=log_q_score,
        auxiliary=aux / num_particles,
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

    def state_dict(self) -> dict[str, Any]:
        """The estimator's own state (none here; baselines add theirs), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

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
