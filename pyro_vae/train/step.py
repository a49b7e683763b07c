"""One optimization step, shared by :func:`~pyro_vae.train.fit` and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from pyro_vae.infer.captured import CapturedLoss, capturable, compiler_found

FIT_CAPTURE_AFTER = 20
"""Eager steps of a structure before :func:`~pyro_vae.train.fit` captures it: short runs (tests,
smoke runs) never pay for a capture (about 0.1 s a structure for the benchmark VAE)."""


COMPILE_STEPS = 50_000
"""Planned steps from which :func:`~pyro_vae.train.fit` compiles its captured step by default
(``compile=None``; about 107 epochs of MNIST's 60,000 images at batch 128). On the Intel host of
docs/benchmarks.md compiling the benchmark VAE's step took 27 s the first time on the machine
(TorchInductor's cache cold) and 2.9-3.2 s in later processes, and saved 0.4-0.8 ms of its
5.5-7.7 ms step; on the AMD EPYC host (AVX2), compiled as one graph of the forward and
backward passes, 12.4-13.4 s cold and 3.8-4.2 s warm, saving about 1.3 ms of a 6.1-7.9 ms step:
a run this long pays back even a cold compile (at 0.54 ms a step), a short one would not.
Only the structures run :data:`FIT_COMPILE_AFTER` times are compiled."""


FIT_COMPILE_AFTER = 1_000
"""Runs of a structure before :func:`~pyro_vae.train.fit`'s default (``compile=None``) compiles
its captured graph, on a run long enough to compile (:data:`COMPILE_STEPS`): the structure of
the full batches, run every step, is compiled at step 1,001 (its first 1,000 steps replay the
uncompiled graph: under 1 s of a run's savings); a structure run once an epoch (the smaller
last batch) would be compiled only after 1,000 epochs, as it never pays back its seconds of
compiling, and is replayed uncompiled instead."""


def resolve_compile(
    compile: bool | None, *, steps: int, capture_after: int | None, distributed: bool
) -> bool:
    """``compile`` with ``None`` resolved: ``True`` for a run of at least :data:`COMPILE_STEPS`
    planned ``steps`` whose step is captured (``capture_after``) in one process, where a C++
    compiler is found; ``False`` otherwise. The compiled graph runs its matrix products on
    the kernels the uncompiled one would (``matmul``: oneDNN's, called from the compiled
    code, with ``"onednn"``). It depends only on the options and the machine, never on timings, so a run
    and its resumption decide alike."""
    if compile is not None:
        return compile
    if capture_after is None or distributed or steps < COMPILE_STEPS:
        return False
    return compiler_found()


def step_loss(
    loss: Any,
    *,
    capture_after: int | None = FIT_CAPTURE_AFTER,
    matmul: str = "aten",
    compile: bool = False,
    compile_after: int | None = None,
) -> Any:
    """The loss whose ``loss_and_grads`` :func:`~pyro_vae.train.fit`'s steps call: ``loss`` with
    its step captured and replayed (:class:`~pyro_vae.infer.captured.CapturedLoss`) once a
    structure has run ``capture_after`` times, when ``loss`` allows it
    (:func:`~pyro_vae.infer.captured.capturable`); ``loss`` itself otherwise, or with
    ``capture_after=None``. The same draws, values and gradients either way (tested bitwise;
    to float rounding with ``matmul="onednn"``, the captured graph's matrix products on
    oneDNN's kernels, or with ``compile=True``, the captured graph compiled by TorchInductor,
    once a structure has run ``compile_after`` times: at capture with ``None``)."""
    if capture_after is None or capturable(loss):
        return loss
    return CapturedLoss(
        loss, capture_after=capture_after, matmul=matmul, compile=compile, compile_after=compile_after
    )


def train_step(
    loss: Any,
    optimizer: torch.optim.Optimizer,
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor, ...],
    kwargs: dict[str, Any],
    *,
    auxiliary: Sequence[tuple[Any, Callable, Callable, dict[str, Any]]] = (),
    before_step: Callable[[float], float] | None = None,
) -> float:
    """``loss.loss_and_grads`` (plus that of every ``(loss, model, guide, kwargs)`` in
    ``auxiliary``, whose gradients add up) then an optimizer step; returns the summed loss (a float).

    A non-finite loss is returned without stepping, so the parameters stay as they were.
    ``before_step(loss)``, called once the gradients are in, may change them and returns the
    loss the step is judged by (data-parallel training all-reduces both there).
    """
    value = loss.loss_and_grads(model, guide, *batch, **kwargs)
    for aux_loss, aux_model, aux_guide, aux_kwargs in auxiliary:
        value += aux_loss.loss_and_grads(aux_model, aux_guide, *batch, **aux_kwargs)
    if before_step is not None:
        value = before_step(value)
    if math.isfinite(value):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value
