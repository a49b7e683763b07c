"""Module modes during evaluation: every ``nn.Module`` that runs does so in eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook


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
    """
    switched: list[nn.Module] = []

    def to_eval(module: nn.Module, _inputs: object) -> None:
        if module.training:
            module.training = False
            switched.append(module)

    handle = register_module_forward_pre_hook(to_eval)
    try:
        yield
    finally:
        handle.remove()
        for module in switched:
            module.training = True


@contextmanager
def frozen_evaluation() -> Iterator[None]:
    """:func:`evaluation_mode` without gradients: the setting of every evaluator."""
    with torch.no_grad(), evaluation_mode():
        yield
