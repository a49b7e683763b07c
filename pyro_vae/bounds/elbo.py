"""The ELBO per datapoint, for any model/guide pair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_vae._stats import RunningMoments
from pyro_vae.bounds.estimate import BoundEstimate
from pyro_vae.infer.captured_log_weights import CapturedLogWeights, as_capture
from pyro_vae.infer.per_datapoint import accumulate_log_weights


@torch.no_grad()
def elbo(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 1,
    data_chunk: int | None = None,
    particle_chunk: int | None = None,
    max_rows: int | None = None,
    plate_name: str | None = None,
    return_error: bool = False,
    capture: CapturedLogWeights | bool | None = None,
    analytic_kl: bool = False,
    **kwargs: Any,
) -> torch.Tensor | BoundEstimate:
    """Monte Carlo ELBO per datapoint, averaged over ``num_particles`` draws [1]:

    .. math::
        \\mathrm{ELBO}(x) = E_{q(z \\mid x)}[\\log p(x, z) - \\log q(z \\mid x)]
        = \\log p(x) - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z \\mid x)) \\le \\log p(x).

    Site scales are not applied (the ELBO of the unweighted model, not a beta-objective),
    and the extra terms of a training objective (``pyro.factor`` in the guide, auxiliary
    sites) are left out.

    With ``analytic_kl=True`` each latent site contributes
    :math:`-\\mathrm{KL}(q(z_i \\mid \\cdot) \\| p(z_i \\mid \\cdot))` in closed form where PyTorch
    registers it (sampled :math:`\\log p - \\log q` otherwise), as in
    :class:`~pyro_vae.infer.MeanFieldELBO`: the same expectation with only
    :math:`\\log p(x \\mid z)` sampled, so a smaller variance (tested), valid under the same
    mean-field condition.

    Chunked over data and particles (at most ``max_rows`` particle-rows at once, by default
    :func:`~pyro_vae.infer.per_datapoint.default_max_rows`, unless
    ``data_chunk``/``particle_chunk`` are given), so memory does not grow with
    ``num_particles``.

    :param capture: replay the chunks' log-weights from captured graphs: the same random draws
        and values (bitwise on PyTorch's kernels, uncompiled), less Python per chunk. ``None``
        (the default): a chunk structure is captured once it has run
        :data:`~pyro_vae.infer.captured_log_weights.AUTO_CAPTURE_AFTER` times in a call of at
        least :data:`~pyro_vae.infer.captured_log_weights.AUTO_CAPTURE_CHUNKS` chunks, so
        only long evaluations capture, and compiled by TorchInductor in a call of at least
        :data:`~pyro_vae.infer.captured_log_weights.COMPILE_CHUNKS` chunks (log-weights then
        equal to float rounding, not bitwise), its products on the machine's kernels
        (``matmul="auto"``: to float rounding too where those are oneDNN's); ``True``: after
        one chunk; a
        :class:`~pyro_vae.infer.captured_log_weights.CapturedLogWeights` kept to reuse its
        graphs across calls; ``False``: every chunk eager (a program whose Python changes
        from chunk to chunk, which no check between two checked replays would see).
    :returns: shape ``(N,)``; with ``return_error=True`` a
        :class:`~pyro_vae.bounds.BoundEstimate` whose error is the standard error of the
        particle average.

    References:
        [1] Jordan, Ghahramani, Jaakkola & Saul (1999), "An introduction to variational
        methods for graphical models", Machine Learning 37.
    """
    moments, mode = accumulate_log_weights(
        model,
        guide,
        args,
        kwargs,
        make=RunningMoments,
        num_particles=num_particles,
        data_chunk=data_chunk,
        particle_chunk=particle_chunk,
        max_rows=max_rows,
        plate_name=plate_name,
        capture=as_capture(capture),
        analytic_kl=analytic_kl,
    )
    means = [m.mean for m in moments]
    errors = [m.standard_error for m in moments]
    value = torch.cat(means)
    if return_error:
        return BoundEstimate(
            value=value, standard_error=torch.cat(errors), num_particles=num_particles, mode=mode
        )
    return value
