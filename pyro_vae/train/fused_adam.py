"""Adam with PyTorch's fused kernel and a lean step: the default optimizer of :func:`~pyro_vae.train.fit`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import optimizer as _optimizer

from pyro_vae.errors import InputError

_ADAM_STEP: Callable[..., Any] = torch.optim.Adam.step
while getattr(_ADAM_STEP, "hooked", False):  # another Adam's patch: its hooks must not run twice
    _ADAM_STEP = _ADAM_STEP.__wrapped__  # type: ignore[attr-defined]

_TORCH_DIR = os.path.dirname(torch.__file__)


def _without_torch_wrappers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` without the wrappers PyTorch's own code put around it (``torch._disable_dynamo``'s,
    whose first call in a process imports TorchDynamo, 0.5-0.8 s on the AVX-512 AMD host of
    docs/benchmarks.md, only to mark the method as not to be traced; the optimizer step's
    grad-mode wrapper, which imports it too). Unwrapped when called, so a wrapper another
    library puts on top later stays (and the unwrapping stops at it)."""
    while hasattr(fn, "__wrapped__") and getattr(fn, "__code__", None) is not None:
        if not fn.__code__.co_filename.startswith(_TORCH_DIR):
            break
        fn = fn.__wrapped__
    return fn


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
    (eight tensors, 0.69 million numbers), interleaved medians of 1,800 steps, four runs: 0.36-0.42 ms
    for ``torch.optim.Adam(fused=True).step`` against 0.28-0.31 ms for this one, the kernel
    alone taking 0.20-0.21 ms.

    The general step (``torch.optim.Adam.step``) runs instead whenever the lean one does not
    apply: with a ``closure``, a gradient scaler's ``grad_scale``/``found_inf``, a tensor
    ``lr`` or betas, sparse gradients, a group whose parameters mix devices or dtypes (a group
    made ``differentiable`` after construction), or state that the general step would refuse
    (then with its error, raised after it has stepped the groups before). Step hooks (which
    see the arguments ``step`` was called with), learning-rate schedulers, the profiler's
    ``Optimizer.step#FusedAdam.step`` label and subclasses that override ``step`` work as
    for any optimizer. Optimizer's methods run without PyTorch's wrappers that mark them for
    TorchDynamo (:func:`_without_torch_wrappers`), so that training never imports it; under
    ``torch.compile`` the wrapped ones run.

    References:
        [1] Kingma & Ba (2015), "Adam: a method for stochastic optimization", ICLR.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        **options: Any,
    ) -> None:
        """``torch.optim.Adam``'s arguments (so ``type(opt)(params, **opt.defaults)`` rebuilds
        one); ``fused`` can only be ``True``."""
        if options.setdefault("fused", True) is not True:
            raise InputError(f"FusedAdam is torch.optim.Adam with fused=True, got fused={options['fused']!r}")
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **options)

    def step(self, *args: Any, **kwargs: Any) -> float | None:  # type: ignore[override]
        """One Adam step over the parameters that have gradients; ``step(closure)`` as for
        any optimizer (see the class docs)."""
        if not getattr(type(self).step, "runs_hooks", False):
            # a subclass's own step, which Optimizer wraps with the hooks, called this one
            return self._step(*args, **kwargs)
        if (
            _optimizer._global_optimizer_pre_hooks
            or _optimizer._global_optimizer_post_hooks
            or self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or torch.autograd._profiler_enabled()
        ):
            return self.profile_hook_step(type(self)._step)(self, *args, **kwargs)
        return self._step(*args, **kwargs)

    step.hooked = True  # type: ignore[attr-defined]  # Optimizer leaves it unwrapped ...
    step.runs_hooks = True  # type: ignore[attr-defined]  # ... because it runs the hooks itself

    def _optimizer_method(self, name: str, *args: Any) -> Any:
        """``torch.optim.Optimizer``'s method ``name`` on ``args``, without PyTorch's wrappers
        (:func:`_without_torch_wrappers`); the wrapped method where Dynamo is tracing."""
        method = getattr(torch.optim.Optimizer, name)
        if not torch.compiler.is_compiling():
            method = _without_torch_wrappers(method)
        return method(self, *args)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``Optimizer.add_param_group``, without importing TorchDynamo (:meth:`_optimizer_method`)."""
        self._optimizer_method("add_param_group", param_group)

    def state_dict(self) -> dict[str, Any]:
        """``Optimizer.state_dict``, without importing TorchDynamo (:meth:`_optimizer_method`)."""
        return self._optimizer_method("state_dict")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``Optimizer.load_state_dict``, without importing TorchDynamo (:meth:`_optimizer_method`)."""
        self._optimizer_method("load_state_dict", state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``Optimizer.zero_grad``; with ``set_to_none`` (the default) and no profiler running,
        without its profiler label (the same ``None`` gradients)."""
        if not set_to_none or torch.autograd._profiler_enabled():
            super().zero_grad(set_to_none)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _general_step(self, closure: Callable[[], float] | None) -> float | None:
        """``torch.optim.Adam.step`` (its hooks aside): its body in the grad mode its wrapper
        sets (no gradients: ``fused=True`` refuses ``differentiable=True``), without the
        wrapper's import of TorchDynamo for a graph break (the wrapped step where Dynamo is
        tracing)."""
        if torch.compiler.is_compiling():
            return _ADAM_STEP(self, closure)
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return _without_torch_wrappers(_ADAM_STEP)(self, closure)
        finally:
            torch.set_grad_enabled(previous)

    def _step(self, closure: Callable[[], float] | None = None) -> float | None:
        if (
            closure is not None
            or getattr(self, "grad_scale", None) is not None
            or getattr(self, "found_inf", None) is not None
        ):
            return self._general_step(closure)
        calls = []
        for group in self.param_groups:
            call = self._lean_call(group)
            if call is None:
                return self._general_step(None)
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
            exp_avg, exp_avg_sq, step = s.get("exp_avg"), s.get("exp_avg_sq"), s.get("step")
            if exp_avg is None or exp_avg_sq is None or not isinstance(step, torch.Tensor):
                return None  # state torch's step rejects: its error, after its earlier groups' steps
            if amsgrad:
                max_exp_avg_sq = s.get("max_exp_avg_sq")
                if max_exp_avg_sq is None:
                    return None
                max_exp_avg_sqs.append(max_exp_avg_sq)
            kinds.add((p.device, p.dtype))
            params.append(p)
            grads.append(grad)
            exp_avgs.append(exp_avg)
            exp_avg_sqs.append(exp_avg_sq)
            steps.append(step)
        if len(kinds) > 1:
            return None
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
