"""Minibatch scaling for programs that do not scale themselves: the data plate rescaled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample

from pyro_vae.errors import InputError
from pyro_vae.infer.layout import PLATE_HELP, PlateLayout, frame_size
from pyro_vae.infer.particles import plan_program, probing, run_particles


class ScaleDataPlate(Messenger):
    """Make a data plate of the batch's size behave as Pyro's subsampled plate
    ``pyro.plate(name, N, subsample=...)``: every sample site inside the plate ``name`` gets
    its scale multiplied by :math:`N / B` and the plate's frame records the full size
    :math:`N`. Pyro's ELBOs (which read the scale) and pyro_vae's losses (which read the
    frame, so that :math:`N / B` stays outside each datapoint's log-mean-exp) then see
    exactly what a program that passes ``num_data`` to its plate would give them.

    :param plate_name: the data plate.
    :param num_data: :math:`N`, the rows of the data set.
    """

    def __init__(self, plate_name: str, num_data: int) -> None:
        super().__init__()
        self.plate_name = plate_name
        self.num_data = num_data

    def _process_message(self, msg: Message) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        stack = msg["cond_indep_stack"]
        for i, frame in enumerate(stack):
            if frame.name != self.plate_name:
                continue
            size = frame_size(frame, tuple(msg["fn"].batch_shape))  # type: ignore[union-attr]
            if size > 0 and frame.full_size in (None, frame.size) and size != self.num_data:
                msg["scale"] = msg["scale"] * (self.num_data / size)
                rescaled = frame._replace(full_size=self.num_data)
                msg["cond_indep_stack"] = (*stack[:i], rescaled, *stack[i + 1 :])
            return


def data_plate(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, *, plate_name: str | None = None
) -> PlateLayout:
    """The data plate of a program run on ``args`` (one run with modules in eval mode, no
    gradients, the random number generators forked): its name, dim, size :math:`B` and the
    full size :math:`N` the program declares. :class:`InputError` if it has none."""
    with probing(args):
        plan = plan_program(model, guide, args, kwargs, plate_name=plate_name)
        run = run_particles(model, guide, args, kwargs, plan=plan, num_particles=1)
    if run.layout.data_plate is None:
        raise InputError(run.layout_error or f"the program has no data plate; {PLATE_HELP}")
    local = [n for n, plates in plan.local_params.items() if run.layout.data_plate in plates]
    if local:
        raise InputError(
            f"the program has parameters per datapoint ({local[0]!r}, as Pyro's AutoNormal has), which "
            "minibatches of rows would share across datapoints; train it full batch (batch_size=None) "
            "or use an amortized guide"
        )
    return run.layout


def scaled_to_data(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_data: int,
    plate_name: str | None = None,
) -> tuple[Callable, Callable, str]:
    """``(model, guide, how)`` whose minibatch objective on ``args`` (a minibatch of a data set of
    ``num_data`` rows) is an unbiased estimate of the full-data one.

    A program whose data plate already declares :math:`N` (``pyro.plate("data", num_data,
    subsample=...)``) is returned as it is (``how = "program"``). One whose data plate has
    the batch's size (``pyro.plate("data", len(x))``, with or without a ``num_data`` keyword
    it ignores) is wrapped in :class:`ScaleDataPlate` (``how = "rescaled"``). Any other
    declared size is an error naming the plate.
    """
    layout = data_plate(model, guide, args, kwargs, plate_name=plate_name)
    assert layout.data_plate is not None
    if layout.full_size == num_data:
        return model, guide, "program"
    if layout.full_size != layout.size:
        raise InputError(
            f"the data plate '{layout.data_plate}' declares {layout.full_size} datapoints but the "
            f"data has {num_data} rows; pass the data set's size (or nothing) to the plate"
        )
    scale = ScaleDataPlate(layout.data_plate, num_data)
    return _wrapped(model, scale), _wrapped(guide, scale), "rescaled"


def _wrapped(fn: Callable, scale: ScaleDataPlate) -> Callable:
    def scaled(*args: Any, **kwargs: Any) -> Any:
        with scale:
            return fn(*args, **kwargs)

    scaled.__wrapped__ = fn  # type: ignore[attr-defined]
    return scaled
