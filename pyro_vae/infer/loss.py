"""The one public loss base: write an estimator as one method of per-datapoint terms."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypedDict, runtime_checkable

import torch
from pyro.infer import ELBO

from pyro_vae._checks import check_positive_int
from pyro_vae.errors import InputError
from pyro_vae.infer.particles import HookFactory, ParticleRun, ProgramPlan, plan_program, run_particles
from pyro_vae.infer.terms import Terms, collect_terms


@runtime_checkable
class StatefulLoss(Protocol):
    """A loss with state of its own (baselines, step counters): :func:`~pyro_vae.train.fit`
    checkpoints it with ``state_dict``/``load_state_dict`` and ``reset`` starts it afresh."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def reset(self) -> None: ...


class ParticleOptions(TypedDict, total=False):
    """The options every :class:`ParticleLoss` takes (keyword-only), which an estimator's own
    constructor forwards with ``**options: Unpack[ParticleOptions]``."""

    num_particles: int
    plate_name: str | None
    vectorize_particles: bool | None
    max_plate_nesting: int | None


def program_key(fn: Callable) -> tuple[int, int]:
    """Identity of a program: bound methods are new objects at every attribute access."""
    return id(getattr(fn, "__func__", fn)), id(getattr(fn, "__self__", None))


class ParticleLoss(ELBO):
    """Base of every pyro_vae loss: a Pyro loss that records ``num_particles`` draws per
    datapoint once (vectorized where the program broadcasts) and hands the per-datapoint
    :class:`~pyro_vae.infer.terms.Terms` to :meth:`surrogate`.

    Write an estimator by implementing one method, :meth:`surrogate`, returning the
    objective's estimate (to be maximized) and a surrogate with the same value whose
    gradient is the estimator. ``loss``, ``differentiable_loss`` and ``loss_and_grads``
    then behave as in Pyro's ELBOs, so the estimator works with :class:`pyro.infer.SVI` and
    :func:`~pyro_vae.train.fit`. For example, the plain reparameterized ELBO::

        class MyELBO(ParticleLoss):
            def surrogate(self, terms):
                objective = terms.batch_objective(terms.training_weight().mean(0))
                return objective, objective

    Terms are *scaled* (site scales kept, :math:`N / B` in ``terms.data_scale``): use
    ``terms.batch_objective`` to scale a per-datapoint objective to the minibatch estimate
    of the full-data one. An estimator that draws values itself (relaxations, antithetic
    pairs, enumeration) overrides :meth:`hooks`; one with state of its own overrides
    ``state_dict``/``load_state_dict``/``reset`` (:class:`StatefulLoss`).

    :param num_particles: :math:`K`, draws per datapoint.
    :param plate_name: the data plate (found by its size when omitted).
    :param vectorize_particles: ``True``: all particles in one pass, an error if the program
        does not broadcast; ``False``: one pass per particle; ``None`` (default): vectorized
        when the program allows it.
    :param max_plate_nesting: the program's plate nesting, if known (else found by one probe;
        a program nesting more plates is refused).
    """

    analytic_kl = False
    """Whether :meth:`terms` uses closed-form KL terms where registered."""

    linear_objective = False
    """Whether :meth:`surrogate` only reads ``batch_objective(terms.training_weight().mean(0))``
    (an objective linear in the per-datapoint terms, the ELBO): :meth:`terms` then takes the
    totals fast path of :func:`~pyro_vae.infer.terms.collect_terms`."""

    def __init__(
        self,
        *,
        num_particles: int = 1,
        plate_name: str | None = None,
        vectorize_particles: bool | None = None,
        max_plate_nesting: int | None = None,
    ) -> None:
        check_positive_int(num_particles, "num_particles")
        if max_plate_nesting is not None:
            check_positive_int(max_plate_nesting, "max_plate_nesting", minimum=0)
        if vectorize_particles not in (None, True, False):
            raise InputError(f"vectorize_particles must be True, False or None, got {vectorize_particles!r}")
        super().__init__(num_particles=num_particles)
        self.plate_name = plate_name
        self.vectorize_particles = vectorize_particles
        self.max_plate_nesting = max_plate_nesting if max_plate_nesting is not None else math.inf
        self._nesting_given = max_plate_nesting
        self._plan: ProgramPlan | None = None
        self._plan_key: tuple | None = None

    # ------------------------------------------------------------------ the one method
    def surrogate(self, terms: Terms) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, surrogate)``: the estimate of the objective and a scalar with the same
        value whose gradient is the estimator's gradient of it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks
    def hooks(self) -> HookFactory | None:
        """Value hooks for guide sites (see :data:`~pyro_vae.infer.particles.HookFactory`)."""
        return None

    relaxed_values = False
    """Whether the values :meth:`hooks` gives are relaxed stand-ins for discrete ones."""

    gumbel_max = True
    """Draw categorical guide sites by the Gumbel-max trick in vectorized passes."""

    # ------------------------------------------------------------------ machinery
    def plan(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> ProgramPlan:
        """The program's structure, probed once per program and reused."""
        key = (program_key(model), program_key(guide))
        if self._plan is None or self._plan_key != key:
            self._plan = plan_program(
                model,
                guide,
                args,
                kwargs,
                plate_name=self.plate_name,
                max_plate_nesting=self._nesting_given,
            )
            self._plan_key = key
        return self._plan

    def particles(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        *,
        hooks: HookFactory | None = None,
    ) -> ParticleRun:
        """One recorded run of ``num_particles`` particles (value hooks: ``hooks`` if given,
        else :meth:`hooks`)."""
        return run_particles(
            model,
            guide,
            args,
            kwargs,
            plan=self.plan(model, guide, args, kwargs),
            num_particles=self.num_particles,
            hooks=hooks if hooks is not None else self.hooks(),
            relaxed=self.relaxed_values,
            gumbel_max=self.gumbel_max,
            vectorize=self.vectorize_particles,
        )

    def terms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Terms:
        """The scaled per-datapoint terms of one run."""
        return collect_terms(
            self.particles(model, guide, args, kwargs),
            scaled=True,
            analytic_kl=self.analytic_kl,
            totals=self.linear_objective,
        )

    def objective_and_surrogate(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`surrogate` of one run's :meth:`terms`; estimators that are not a function of one
        run's terms (exact enumeration) override this instead."""
        return self.surrogate(self.terms(model, guide, args, kwargs))

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError(f"{type(self).__name__} records sites itself; it has no Pyro traces")

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The negated surrogate (its gradient is the estimator's)."""
        return -self.objective_and_surrogate(model, guide, args, kwargs)[1]

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The negated estimate of the objective."""
        with torch.no_grad():
            return -float(self.objective_and_surrogate(model, guide, args, kwargs)[0])

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Backpropagate the negated surrogate; return the negated objective estimate; then
        :meth:`after_step`."""
        objective, surrogate = self.objective_and_surrogate(model, guide, args, kwargs)
        if surrogate.requires_grad:
            (-surrogate).backward()
        self.after_step()
        return -float(objective.detach())

    # ------------------------------------------------------------------ capture
    def capture_key(self) -> Hashable:
        """What of the estimator's own state its step's tensor operations depend on (a
        temperature): :class:`~pyro_vae.infer.captured.CapturedLoss` keeps a graph per value.
        An estimator with state that overrides this (and updates that state only in
        :meth:`after_step`) can have its step captured; ``()`` here, for no state."""
        return ()

    def after_step(self) -> None:
        """Advance the estimator's own state after a training step, eager or replayed from a
        captured graph (a step counter); nothing here."""

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The estimator's own state, for checkpoints (none here)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise InputError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def reset(self) -> None:
        """Start the estimator's own state afresh (nothing here)."""
