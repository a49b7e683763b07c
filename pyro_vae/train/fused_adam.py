"""Adam with PyTorch's fused kernel and a lean step: the default optimizer of :func:`~pyro_vae.train.fit`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import optimizer as _optimizer

_ADAM_STEP: Callable[..., Any] = torch.optim.Adam.step
while getattr(_ADAM_STEP, "hooked", False):  # another Adam's patch: its hooks must not run twice
    _ADAM_STEP = _ADAM_STEP.__wrapped__  # type: ignore[attr-defined]


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(params, fused=True)``, stepping with fewer Python operations.

    Adam [1] updates each parameter :math:`\\theta` with gradient :math:`g` at step :math:`t` by

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2, \\quad
        \\theta \\leftarrow \\theta - \\frac{\\mathrm{lr}}{1 - \\beta_1^t}
        \\frac{m}{\\sqrt{v / (1 - \\beta_2^t)} + \\epsilon}.

    The update is PyTorch's own fused kernel (``torch._fused_adam_``), called with the same
    tensors and hyperparameters as ``torch.optim.Adam(fused=True)`` calls it, so parameters and
    state are bitwise the same (tested), and the state dict is ``torch.optim.Adam``'s (either
    loads the other's). What is left out is the general path's Python: for every group, the
    per-parameter state initialization checks, the dispatch between implementations and the
    regrouping of tensors by device and dtype, and the hook wrapper's profiler label when no
    profiler runs. On the parameters of the benchmark VAE of ``benchmarks/train_step.py``
    (eight tensors, 0.69 million numbers), interleaved medians of 1,800 steps: 0.36-0.39 ms
    for ``torch.optim.Adam(fused=True).step`` against 0.28-0.30 ms for this one, the kernel
    alone taking 0.20-0.21 ms.

    The general step (``torch.optim.Adam.step``) runs instead whenever the lean one does not
    apply: with a ``closure``, a gradient scaler's ``grad_scale``/``found_inf``, a tensor
    ``lr`` or betas, sparse gradients, a group whose parameters mix devices or dtypes, or
    ``differentiable=True``. Step hooks, learning-rate schedulers and the profiler's
    ``Optimizer.step#FusedAdam.step`` label work as for any optimizer.

    References:
        [1] Kingma & Ba (2015), "Adam: a method for stochastic optimization", ICLR.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            fused=True,
        )

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Adam step over the parameters that have gradients (see the class docs)."""
        if (
            _optimizer._global_optimizer_pre_hooks
            or _optimizer._global_optimizer_post_hooks
            or self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or torch.autograd._profiler_enabled()
        ):
            return self._hooked_step(closure)
        return self._step(closure)

    step.hooked = True  # type: ignore[attr-defined]  # hooks and the profiler's label: _hooked_step

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``Optimizer.zero_grad``; with ``set_to_none`` (the default) and no profiler running,
        without its profiler label (the same ``None`` gradients)."""
        if not set_to_none or torch.autograd._profiler_enabled():
            super().zero_grad(set_to_none)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _hooked_step(self, closure: Callable[[], float] | None) -> float | None:
        """:meth:`step` as ``torch.optim.Optimizer`` wraps every optimizer's: step hooks around
        it, inside the profiler's ``Optimizer.step#FusedAdam.step`` label."""
        return self.profile_hook_step(type(self)._step)(self, closure)

    def _step(self, closure: Callable[[], float] | None) -> float | None:
        if (
            closure is not None
            or getattr(self, "grad_scale", None) is not None
            or (getattr(self, "found_inf", None) is not None)
        ):
            return _ADAM_STEP(self, closure)
        calls = []
        for group in self.param_groups:
            call = self._lean_call(group)
            if call is None:
                return _ADAM_STEP(self, None)
            if call[0]:
                calls.append((group, call))
        with torch.no_grad():
            for group, (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps) in calls:
                torch._foreach_add_(steps, 1)
                fused = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
                beta1, beta2 = group["betas"]
                fused(
                    params,
                    grads,
                    exp_avgs,
                    exp_avg_sqs,
                    max_exp_avg_sqs,
                    steps,
                    amsgrad=group["amsgrad"],
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                    grad_scale=None,
                    found_inf=None,
                )
        return None

    def _lean_call(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], ...] | None:
        """The kernel's tensor lists for ``group``, or ``None`` when the general step must run
        (a case the lean one leaves to it, or a parameter whose state is not initialized yet)."""
        beta1, beta2 = group["betas"]
        if (
            not group["fused"]
            or group["differentiable"]
            or group["capturable"]
            or type(group["lr"]) is not float
            or type(beta1) is not float
            or type(beta2) is not float
        ):
            return None
        amsgrad = group["amsgrad"]
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        exp_avgs: list[torch.Tensor] = []
        exp_avg_sqs: list[torch.Tensor] = []
        max_exp_avg_sqs: list[torch.Tensor] = []
        steps: list[torch.Tensor] = []
        kinds = set()
        state = self.state
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            s = state.get(p)
            if not s or grad.is_sparse:
                return None
            kinds.add((p.device, p.dtype))
            params.append(p)
            grads.append(grad)
            exp_avgs.append(s["exp_avg"])
            exp_avg_sqs.append(s["exp_avg_sq"])
            if amsgrad:
                max_exp_avg_sqs.append(s["max_exp_avg_sq"])
            steps.append(s["step"])
        if len(kinds) > 1:
            return None
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
