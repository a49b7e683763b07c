"""Gumbel-softmax (Concrete) and straight-through relaxations of discrete guide sites."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from pyro.poutine.runtime import Message
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical

from pyro_vae._checks import check_positive, check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.loss import ParticleOptions
from pyro_vae.infer.mean_field_elbo import MeanFieldELBO
from pyro_vae.infer.particles import HookFactory, gumbel_noise
from pyro_vae.infer.sites import ValueHook


@dataclass(frozen=True)
class TemperatureSchedule:
    """:math:`\\tau_t = \\max(\\tau_{\\min}, \\tau_0 \\exp(-r \\lfloor t / s \\rfloor s))`, the
    annealing of Jang et al. [1] (:math:`\\tau_0 = 1`, :math:`\\tau_{\\min} = 0.5`, updated every
    :math:`s = 1000` steps with :math:`r \\in \\{10^{-5}, 10^{-4}\\}` in the paper).

    References:
        [1] Jang, Gu & Poole (2017), "Categorical reparameterization with Gumbel-softmax", ICLR.
    """

    initial: float = 1.0
    minimum: float = 0.5
    rate: float = 1e-4
    every: int = 1000

    def __post_init__(self) -> None:
        check_positive(self.initial, "initial temperature")
        check_positive(self.minimum, "minimum temperature")
        check_positive_int(self.every, "every")
        if self.rate < 0:
            raise InputError(f"rate must be >= 0, got {self.rate}")

    def __call__(self, step: int) -> float:
        return max(self.minimum, self.initial * math.exp(-self.rate * (step // self.every) * self.every))


def _unwrap(fn: Distribution) -> Distribution:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def relaxed_sample(fn: Distribution, temperature: float, *, straight_through: bool) -> torch.Tensor:
    """A reparameterized relaxed draw for a ``OneHotCategorical`` or ``Bernoulli`` site
    (possibly inside ``Independent``) with logits :math:`\\alpha`:

    - one-hot: :math:`y = \\operatorname{softmax}((\\alpha + g) / \\tau)`,
      :math:`g = -\\log(-\\log U)`, :math:`U \\sim \\mathcal U(0, 1)` (Gumbel noise) [1, 2];
    - binary: :math:`y = \\sigma((\\alpha + \\log U - \\log(1 - U)) / \\tau)`,
      :math:`U \\sim \\mathcal U(0, 1)` (the binary Concrete) [2];

    the distributions of Pyro's ``RelaxedOneHotCategorical`` and ``RelaxedBernoulli``,
    written with a few tensor operations (tested against the exact distributions: the
    argmax is categorical with probabilities :math:`\\operatorname{softmax}(\\alpha)`, and the
    binary Concrete has CDF :math:`\\sigma(\\tau \\operatorname{logit}(y) - \\alpha)`). With
    ``straight_through`` the value is the hard one-hot (or 0/1) of :math:`y` and the gradient
    that of :math:`y` [1, 3] (Pyro's ``...StraightThrough`` forms).
    """
    base = _unwrap(fn)
    if not isinstance(base, OneHotCategorical | Bernoulli):
        raise InputError(
            f"only OneHotCategorical and Bernoulli sites can be relaxed, not {type(base).__name__} "
            "(write a categorical latent as OneHotCategorical so that it can take relaxed values)"
        )
    logits = base.logits
    if isinstance(base, OneHotCategorical):
        soft = ((logits + gumbel_noise(logits)) / temperature).softmax(-1)
        if not straight_through:
            return soft
        hard = torch.nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft)
    else:
        finfo = torch.finfo(logits.dtype)
        u = torch.rand_like(logits).clamp(min=finfo.tiny, max=1 - finfo.eps)
        soft = torch.sigmoid((logits + u.log() - (-u).log1p()) / temperature)
        if not straight_through:
            return soft
        hard = (soft > 0.5).to(soft)
    return hard + (soft - soft.detach())


def _relax_hook(temperature: float, straight_through: bool) -> ValueHook:
    """A value hook giving the discrete latent sites of the guide a relaxed value (the
    distribution is kept, for the closed-form KL)."""

    def hook(msg: Message) -> torch.Tensor | None:
        fn = msg["fn"]
        if fn.has_rsample:  # type: ignore[union-attr]
            return None
        return relaxed_sample(fn, temperature, straight_through=straight_through)  # type: ignore[arg-type]

    return hook


class RelaxedELBO(MeanFieldELBO):
    """The ELBO with discrete guide sites relaxed: Gumbel-softmax [1] / Concrete [2], or
    straight-through Gumbel-softmax [1].

    A ``OneHotCategorical`` site with logits :math:`\\alpha` takes the value
    :math:`y = \\operatorname{softmax}((\\alpha + g) / \\tau)`, :math:`g_i \\sim \\mathrm{Gumbel}(0, 1)`
    (a ``Bernoulli`` site the binary Concrete value), which is reparameterized; the model
    is run on :math:`y`. As in Jang et al., the KL term stays that of the discrete
    distributions, :math:`\\mathrm{KL}(q(z \\mid x) \\| p(z))` in closed form, so the
    objective is

    .. math::
        \\tilde{\\mathcal L}_\\tau = E_g\\big[\\log p(x \\mid y_\\tau(\\alpha, g))\\big]
        - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z)),

    which tends to the ELBO as :math:`\\tau \\to 0`; for :math:`\\tau > 0` its gradient is a
    *biased* estimate of the ELBO gradient, with lower variance than the score function.
    The bias shrinks as :math:`\\tau` falls (tested against the exact gradient) while the
    variance grows. With ``straight_through=True`` the model sees the hard one-hot
    :math:`\\operatorname{onehot}(\\arg\\max y)` and the gradient is that of the relaxed value.

    The model's latent sites must have the KL registered in PyTorch for their discrete
    distributions (OneHotCategorical and Bernoulli, also inside ``Independent``); other latent
    sites are treated as in :class:`~pyro_vae.infer.MeanFieldELBO`.

    :param temperature: :math:`\\tau`, a float or a :class:`TemperatureSchedule` of the
        number of ``loss_and_grads`` calls made so far (``self.step``; :meth:`reset`
        restarts it).
    :param straight_through: use the hard value forward.

    References:
        [1] Jang, Gu & Poole (2017), "Categorical reparameterization with Gumbel-softmax", ICLR.
        [2] Maddison, Mnih & Teh (2017), "The Concrete distribution: a continuous relaxation of
        discrete random variables", ICLR.
        [3] Bengio, Léonard & Courville (2013), "Estimating or propagating gradients through
        stochastic neurons for conditional computation", arXiv:1308.3432 (straight-through).
    """

    relaxed_values = True

    def __init__(
        self,
        *,
        temperature: float | TemperatureSchedule = 1.0,
        straight_through: bool = False,
        **options: Unpack[ParticleOptions],
    ) -> None:
        super().__init__(**options)
        if not isinstance(temperature, TemperatureSchedule):
            check_positive(temperature, "temperature")
        self.schedule = temperature
        self.straight_through = straight_through
        self.step = 0

    @property
    def temperature(self) -> float:
        """The temperature the next step uses."""
        s = self.schedule
        return s(self.step) if isinstance(s, TemperatureSchedule) else float(s)

    def hooks(self) -> HookFactory:
        hook = _relax_hook(self.temperature, self.straight_through)
        return lambda index: hook

    def state_dict(self) -> dict[str, Any]:
        """The number of steps taken (which sets the scheduled temperature), for checkpoints."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])

    def reset(self) -> None:
        """Back to the schedule's first step."""
        self.step = 0

    def capture_key(self) -> tuple[float, bool]:
        """The temperature of the next step (and the straight-through flag): a captured graph
        holds it as a constant, so a schedule that changes it makes another graph."""
        return self.temperature, self.straight_through

    def after_step(self) -> None:
        """One more step taken (the schedule's argument)."""
        self.step += 1
