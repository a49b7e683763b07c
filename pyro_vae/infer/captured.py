"""A training loss whose tensor computation is captured once per program structure and replayed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

from pyro_vae.errors import InputError
from pyro_vae.infer.loss import ParticleLoss, program_key
from pyro_vae.infer.modes import BufferSnapshot


def _describe(value: Any) -> Any:
    """What of an argument a captured graph depends on: a tensor's shape, dtype, device and
    gradient flag (its values are graph inputs); any other value itself (``None`` when unhashable)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.requires_grad)
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value), value)


def _modules_of(fn: Callable) -> list[nn.Module]:
    owner = getattr(fn, "__self__", None)
    return list(owner.modules()) if isinstance(owner, nn.Module) else []


class CapturedLoss:
    """``loss`` (a :class:`~pyro_vae.infer.ParticleLoss`) with its training step replayed from a
    captured graph once the program's structure is known.

    The model and guide stay Pyro programs; what is captured is the tensor computation one
    run of them performs: :func:`torch.fx.experimental.proxy_tensor.make_fx` records the ATen
    operations of ``loss.objective_and_surrogate`` (the effect handlers, the site recorder
    and the per-site bookkeeping are Python that produces no operation, so the graph has
    none of them). Replaying the graph runs the same operations, random draws included, in
    the same order: the same values and gradients as the eager step for the same random
    state (tested bitwise). With ``compile=True`` the graph is also compiled by
    ``torch.compile`` (TorchInductor, with PyTorch's own random operations kept, so draws are
    unchanged; values and gradients equal to float rounding, tested); compiling takes tens of
    seconds once, for long training runs.

    A graph is kept per *structure*: the programs (their identity), the shapes, dtypes and
    devices of the tensor arguments and the values of the others, the parameter store's
    tensors, the ``training`` flags of the modules the programs are methods of, and the
    gradient mode. A structure is run eagerly the first time it is seen (the loss plans the
    program and checks it, as without capture); the second time it is captured and checked
    once: the graph's objective must equal an eager run's at the same random state, else the
    structure stays eager (``fallback_reason`` says why). The check catches a capture that
    misses work (an operation outside PyTorch's dispatcher). Beyond ``max_graphs`` structures
    (a KL warm-up changing ``kl_weight`` every step, a last smaller minibatch) the new ones
    run eagerly. Steps run inside enclosing Pyro handlers (``pyro.infer.SVI``'s parameter
    capture) are always eager, so that the handlers see the sites.

    Python control flow that reads tensor *values* (``if x.sum() > 0``, ``.item()``) in the
    model, guide or loss cannot be captured (PyTorch refuses to read a value while tracing):
    the structure then stays eager. Pyro's argument validation, which reads values, is off in
    the captured graph (it ran in the first, eager step). Losses with state of their own
    (baselines updated in Python) are refused.

    :param loss: the loss to run (``inner``); ``loss`` and ``differentiable_loss`` stay eager.
    :param compile: also compile each captured graph with ``torch.compile``.
    :param max_graphs: structures captured at most.
    """

    def __init__(self, loss: ParticleLoss, *, compile: bool = False, max_graphs: int = 4) -> None:
        if not isinstance(loss, ParticleLoss):
            raise InputError(f"CapturedLoss wraps a pyro_vae ParticleLoss, got {type(loss).__name__}")
        if type(loss).state_dict is not ParticleLoss.state_dict:
            raise InputError(
                f"{type(loss).__name__} has state of its own (updated in Python every step), which a "
                "captured graph would freeze; train it without CapturedLoss"
            )
        self.inner = loss
        self.compile = compile
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, Callable | None] = {}
        self._seen: set[tuple] = set()
        self.fallback_reason = ""
        self.captured_steps = 0

    # ------------------------------------------------------------------ Pyro's ELBO interface
    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """As ``loss.loss_and_grads``, from the structure's captured graph when there is one."""
        graph = self._graph(model, guide, args, kwargs)
        if graph is None:
            return self.inner.loss_and_grads(model, guide, *args, **kwargs)
        objective, surrogate = graph(*_tensors(args, kwargs))
        if surrogate.requires_grad:
            (-surrogate).backward()
        self.captured_steps += 1
        return -float(objective.detach())

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return self.inner.loss(model, guide, *args, **kwargs)

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        return self.inner.differentiable_loss(model, guide, *args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def reset(self) -> None:
        self.inner.reset()

    # ------------------------------------------------------------------ capture
    def structure(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple | None:
        """The key of a captured graph (``None``: this call cannot be captured)."""
        if _PYRO_STACK:
            return None
        described = [_describe(a) for a in args] + [_describe(kwargs[k]) for k in sorted(kwargs)]
        if any(d is None for d in described):
            return None
        parts: list[Any] = [
            program_key(model),
            program_key(guide),
            torch.is_grad_enabled(),
            tuple(sorted(kwargs)),
        ]
        parts += described
        parts.append(tuple((n, id(v)) for n, v in pyro.get_param_store().named_parameters()))
        parts.append(tuple(m.training for fn in (model, guide) for m in _modules_of(fn)))
        return tuple(parts)

    def _graph(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Callable | None:
        key = self.structure(model, guide, args, kwargs)
        if key is None:
            return None
        if key in self._graphs:
            return self._graphs[key]
        if key not in self._seen:  # first sight: eager, so the loss plans and checks the program
            self._seen.add(key)
            return None
        if len(self._graphs) >= self.max_graphs:
            return None
        self._graphs[key] = graph = self._capture(model, guide, args, kwargs)
        return graph

    def _capture(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Callable | None:
        from torch.fx.experimental.proxy_tensor import make_fx

        tensors = _tensors(args, kwargs)

        def run(*values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a, k = _with_tensors(args, kwargs, values)
            return self.inner.objective_and_surrogate(model, guide, a, k)

        devices = [t.device for t in tensors if t.device.type == "cuda"][:1]
        # Tracing and the check run the program twice more: neither may change a later draw or
        # a running statistic of the program's modules.
        with torch.random.fork_rng(devices=devices), BufferSnapshot(), pyro.validation_enabled(False):
            try:
                graph: Callable = make_fx(run)(*tensors)
                if self.compile:
                    graph = torch.compile(graph, dynamic=False, options={"fallback_random": True})
                state = _rng_state(devices)
                with torch.no_grad():
                    expected = run(*tensors)[0]
                _set_rng_state(state, devices)
                got = graph(*tensors)[0].detach()
            except Exception as e:
                self.fallback_reason = f"capture failed: {type(e).__name__}: {e}"
                return None
        tol = {"rtol": 1e-5, "atol": 1e-5} if self.compile else {"rtol": 0.0, "atol": 0.0}
        if not torch.allclose(got, expected, **tol):
            self.fallback_reason = (
                f"the captured graph's objective ({float(got)}) differs from the eager one "
                f"({float(expected)}): the program's Python depends on tensor values"
            )
            return None
        return graph


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [a for a in (*args, *(kwargs[k] for k in sorted(kwargs))) if isinstance(a, torch.Tensor)]


def _with_tensors(args: tuple, kwargs: dict, values: tuple[torch.Tensor, ...]) -> tuple[tuple, dict]:
    it = iter(values)
    new_args = tuple(next(it) if isinstance(a, torch.Tensor) else a for a in args)
    new_kwargs = {k: next(it) if isinstance(kwargs[k], torch.Tensor) else kwargs[k] for k in sorted(kwargs)}
    return new_args, new_kwargs


def _rng_state(devices: list[torch.device]) -> tuple:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state: tuple, devices: list[torch.device]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1], strict=True):
        torch.cuda.set_rng_state(s, d)
