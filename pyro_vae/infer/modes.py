"""Module modes during evaluation: every ``nn.Module`` that runs does so in eval mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle


@contextmanager
def evaluation_mode() -> Iterator[None]:
    """Run every ``nn.Module`` called inside the block in eval mode, and restore the mode
    of each afterwards.

    A module's mode decides whether BatchNorm uses batch statistics (and updates its
    running averages) and whether Dropout drops. Evaluation (bounds, diagnostics, per-epoch
    metrics, finding a program's structure) must do neither: it must measure the model, not
    change it. The rule needs no list of the program's modules: a global forward pre-hook
    switches each module to eval mode just before it runs, wherever the program keeps it
    (registered with ``pyro.module`` or not, in the model or the guide), and the modules it
    switched go back to train mode on exit, even on error.

    Blocks in the same thread share one hook: the first to open registers it, the last to
    close removes it and restores every module switched while any was open. An evaluation
    over many chunks holds the mode once, and its chunks' own blocks then neither register
    a hook nor switch modules. Blocks may close in any order (a generator suspended inside
    its block while the caller's block closes): the hook stays while one is open.
    """
    state = _STATE
    if state.open == 0:
        switched = state.switched = []

        def to_eval(module: nn.Module, _inputs: object) -> None:
            if module.training:
                module.training = False
                switched.append(module)

        state.handle = register_module_forward_pre_hook(to_eval)
    state.open += 1
    try:
        yield
    finally:
        state.open -= 1
        if state.open == 0:
            state.handle.remove()  # type: ignore[union-attr]
            for module in state.switched:
                module.training = True
            state.handle, state.switched = None, []


class _EvaluationState(threading.local):
    """This thread's open :func:`evaluation_mode` blocks, their hook and the modules it switched."""

    def __init__(self) -> None:
        self.open = 0
        self.handle: RemovableHandle | None = None
        self.switched: list[nn.Module] = []


_STATE = _EvaluationState()


def evaluating() -> bool:
    """Whether this thread is inside :func:`evaluation_mode` (an evaluator's run)."""
    return _STATE.open > 0


@contextmanager
def frozen_evaluation() -> Iterator[None]:
    """:func:`evaluation_mode` without gradients: the setting of every evaluator."""
    with torch.no_grad(), evaluation_mode():
        yield


class BufferSnapshot:
    """The buffers (BatchNorm's running statistics, counters) of every ``nn.Module`` that
    runs while the snapshot is active, as they were when each module first ran;
    :meth:`restore` puts them back, and leaving the block does too.

    For tools that train a caller's program on the side and must leave it as they found it
    (:func:`~pyro_vae.comparison.compare`): the parameter store holds the parameters, but
    buffers live only in the modules. Like :func:`evaluation_mode` it needs no list of the
    program's modules: a global forward pre-hook sees each one before it first runs.
    """

    def __init__(self) -> None:
        self._saved: dict[int, tuple[nn.Module, dict[str, torch.Tensor]]] = {}
        self._handle: object | None = None

    @classmethod
    def of(cls, modules: list[nn.Module]) -> BufferSnapshot:
        """A snapshot of ``modules``' buffers taken now, without a hook (for modules known in
        advance, which may not run as modules: a captured graph updates their buffers directly)."""
        snapshot = cls()
        for module in modules:
            snapshot._see(module, None)
        return snapshot

    @property
    def modules(self) -> list[nn.Module]:
        """The modules seen so far, in the order first seen."""
        return [module for module, _ in self._saved.values()]

    def _see(self, module: nn.Module, _inputs: object) -> None:
        if id(module) not in self._saved:
            buffers = {n: b.detach().clone() for n, b in module.named_buffers(recurse=False) if b is not None}
            self._saved[id(module)] = (module, buffers)

    def restore(self) -> None:
        """Every module seen so far gets the buffers it had when first seen. A buffer that
        still holds its values is left alone, so its version counter stays (a captured graph
        that relied on a constant buffer's values checks that counter)."""
        with torch.no_grad():
            for module, buffers in self._saved.values():
                for name, value in buffers.items():
                    current = getattr(module, name)
                    if not torch.equal(current, value):
                        current.copy_(value)

    def __enter__(self) -> BufferSnapshot:
        self._handle = register_module_forward_pre_hook(self._see)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()  # type: ignore[attr-defined]
        self.restore()
