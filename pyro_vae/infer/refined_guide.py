"""Semi-amortized inference: the encoder proposes a Gaussian, gradient steps refine it per
datapoint (Kim et al. 2018), as a guide that every tool takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

from pyro_vae._checks import check_positive, check_positive_int
from pyro_vae.infer.local_guide import LocalGaussian, amortized_site, local_elbo
from pyro_vae.infer.loss import program_key
from pyro_vae.infer.particles import ProgramPlan, plan_program


class RefinedGuide:
    """The guide :math:`q_S(z_n \\mid x_n)` of semi-amortized inference [1]: the amortized
    guide's Gaussian parameters :math:`\\lambda_0 = \\mathrm{enc}_\\phi(x_n)` followed by
    ``steps`` gradient-ascent steps on each datapoint's ELBO (model parameters fixed):

    .. math::
        \\lambda_{s+1} = \\lambda_s + \\eta\\, \\nabla_\\lambda \\mathcal L(x_n; \\theta, \\lambda_s),
        \\qquad \\mathcal L(x; \\theta, \\lambda) = E_{q_\\lambda}[\\log p_\\theta(x \\mid z)]
        - \\mathrm{KL}(q_\\lambda \\,\\|\\, p(z)),

    with :math:`\\lambda` the unconstrained parameters of :class:`LocalGaussian` (location, log
    scales, or the Cholesky factor's off-diagonal and log diagonal) and the KL in closed form.
    With an exact gradient and a small enough :math:`\\eta` each step raises
    :math:`\\mathcal L = \\log p(x) - \\mathrm{KL}(q_\\lambda \\| p(z \\mid x))`, so refinement closes
    the amortization gap toward the best Gaussian :math:`q^*` of Cremer et al. [2] (tested on
    the linear-Gaussian model against its exact posterior).

    It is a Pyro program with the amortized guide's site, data plate and scale, and it refines
    the rows it is called with (any chunk or minibatch): pass it wherever a guide goes —
    :func:`~pyro_vae.bounds.elbo`, :func:`~pyro_vae.bounds.iwae`, diagnostics,
    :func:`~pyro_vae.train.fit`::

        q_s = refined_guide(vae.model, vae.guide, steps=20, lr=0.1)
        bounds.elbo(vae.model, q_s, x)                 # the bound on the refined q
        fit(vae.model, q_s, x, ...)                    # SA-VAE training (differentiated through)

    The inner runs are hidden from every enclosing handler; only
    the final draw from :math:`q_S` is seen.

    Gradients (training). With ``differentiable=True`` (SA-VAE [1]) the inner steps are
    differentiated through (``create_graph``), so the outer objective's gradient reaches
    :math:`\\phi` and :math:`\\theta` through :math:`\\lambda_S(\\theta, \\phi)` exactly. With
    ``differentiable=False`` the steps are a stop-gradient correction,
    :math:`\\lambda_S = \\lambda_0 + \\mathrm{sg}(\\lambda_S - \\lambda_0)`: the encoder gets the
    gradient at :math:`\\lambda_S` as if it had proposed it (the first-order approximation,
    Jacobian of the steps taken as identity), for the cost of the inner steps alone. Both are
    tested against their definitions. When called without autograd (evaluation), nothing is
    differentiated but the inner steps.

    Each call draws fresh inner particles (``num_particles`` reparameterized draws per step);
    ``sigma_points=True`` uses the :math:`2d` sigma points of
    :func:`~pyro_vae.infer.local_guide.sigma_point_hooks` instead, a deterministic inner
    gradient, exact for models whose log-likelihood is quadratic in :math:`z`. Every refined
    :math:`q_S` is a distribution of the guide's family, so every bound evaluated with it is a
    bound of :math:`\\log p(x)`.

    :param model: the model whose ELBO the steps ascend (the true, unscaled terms).
    :param guide: the amortized guide; its only latent site ``site`` must be a (diagonal)
        Normal or a MultivariateNormal inside the data plate.
    :param steps: :math:`S \\ge 0` (0: the amortized guide's own distribution).
    :param lr: the step size :math:`\\eta`.

    References:
        [1] Kim, Wiseman, Miller, Sontag & Rush (2018), "Semi-amortized variational
        autoencoders", ICML.
        [2] Cremer, Li & Duvenaud (2018), "Inference suboptimality in variational
        autoencoders", ICML.
        [3] Krishnan, Liang & Hoffman (2018), "On the challenges of learning with inference
        networks on sparse, high-dimensional data", AISTATS.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *,
        steps: int,
        lr: float,
        num_particles: int = 1,
        sigma_points: bool = False,
        differentiable: bool = True,
        site: str = "z",
        plate_name: str | None = None,
    ) -> None:
        check_positive_int(steps, "steps", minimum=0)
        check_positive(lr, "refinement learning rate")
        check_positive_int(num_particles, "num_particles")
        self.model, self.guide = model, guide
        self.steps, self.lr, self.num_particles = steps, float(lr), num_particles
        self.sigma_points, self.differentiable = sigma_points, differentiable
        self.site, self.plate_name = site, plate_name
        self._plan: tuple[Any, ProgramPlan] | None = None

    def _local_plan(self, local: LocalGaussian, args: tuple, kwargs: dict) -> ProgramPlan:
        key = program_key(self.model)
        if self._plan is None or self._plan[0] != key:
            plan = plan_program(self.model, local, args, kwargs, plate_name=local.plate_name)
            plan.vectorize = False  # inside a caller's particle plate: one pass per inner particle
            self._plan = (key, plan)
        return self._plan[1]

    def trajectory(self, *args: Any, **kwargs: Any) -> list[LocalGaussian]:
        """:math:`q_0, q_1, \\ldots, q_S` for the rows of ``args`` (as :class:`LocalGaussian` s);
        the runs it takes are hidden from every enclosing handler."""
        with poutine.block():
            return self._trajectory(args, kwargs)

    def _trajectory(self, args: tuple, kwargs: dict) -> list[LocalGaussian]:
        outer_grad = torch.is_grad_enabled()
        through = self.differentiable and outer_grad
        with torch.enable_grad():
            with torch.set_grad_enabled(outer_grad):
                site, frame = amortized_site(
                    self.guide, args, kwargs, self.site, plate_name=self.plate_name, purpose="refinement"
                )
            first = LocalGaussian.from_site(site, frame, detach=False)
            if through:
                start = first.with_params(
                    [p if p.requires_grad else p.detach().requires_grad_(True) for p in first.params]
                )
            else:
                start = first.with_params([p.detach().requires_grad_(True) for p in first.params])
            plan = self._local_plan(start.detached(), args, kwargs)
            path, local = [start], start
            for _ in range(self.steps):
                objective = local_elbo(
                    self.model,
                    local,
                    args,
                    kwargs,
                    num_particles=self.num_particles,
                    sigma_points=self.sigma_points,
                    plan=plan,
                ).sum()  # each datapoint's parameters get the gradient of its own ELBO
                grads = torch.autograd.grad(objective, local.params, create_graph=through)
                new = [p + self.lr * g for p, g in zip(local.params, grads, strict=True)]
                if not through:
                    new = [p.detach().requires_grad_(True) for p in new]
                local = local.with_params(new)
                path.append(local)
        if through:
            return path
        if outer_grad:  # stop-gradient: the encoder's output plus the detached correction
            return [
                first.with_params(
                    [
                        a + (b - a0).detach()
                        for a, a0, b in zip(first.params, start.params, q.params, strict=True)
                    ]
                )
                for q in path
            ]
        return [q.detached() for q in path]

    def refine(self, *args: Any, **kwargs: Any) -> LocalGaussian:
        """:math:`q_S` for the rows of ``args``."""
        return self.trajectory(*args, **kwargs)[-1]

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.refine(*args, **kwargs)(*args, **kwargs)


refined_guide = RefinedGuide
"""``refined_guide(model, guide, steps=..., lr=...)``: the semi-amortized guide of ``guide``,
the :class:`RefinedGuide` constructor under a function's name."""
