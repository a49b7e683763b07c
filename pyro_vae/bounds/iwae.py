"""The importance-weighted bound :math:`\\mathcal L_K` per datapoint, for any model/guide pair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pyro_vae.bounds.estimate import BoundEstimate
from pyro_vae.infer.captured_log_weights import CapturedLogWeights, as_capture
from pyro_vae.infer.log_mean_exp import StreamingLogMeanExp
from pyro_vae.infer.per_datapoint import accumulate_log_weights


@torch.no_grad()
def iwae(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_particles: int = 50,
    particle_chunk: int | None = None,
    data_chunk: int | None = None,
    max_rows: int | None = None,
    plate_name: str | None = None,
    return_error: bool = False,
    capture: CapturedLogWeights | bool | None = None,
    **kwargs: Any,
) -> torch.Tensor | BoundEstimate:
    """Importance-weighted bound per datapoint [1]:

    .. math::
        \\mathcal L_K(x) = E\\Bigl[\\log \\frac1K \\sum_{k=1}^K \\frac{p(x, z_k)}{q(z_k \\mid x)}\\Bigr],
        \\qquad z_k \\sim q(z \\mid x),

    with :math:`\\mathcal L_1 = \\mathrm{ELBO} \\le \\mathcal L_K \\le \\mathcal L_{K+1} \\le \\log p(x)`
    and :math:`\\mathcal L_K \\to \\log p(x)` as :math:`K \\to \\infty`. One log-mean-exp
    *per datapoint*: unlike ``pyro.infer.Importance`` and ``vectorized_importance_weights``
    (which sum log-weights over the batch) and ``RenyiELBO(alpha=0)`` under a subsampled
    plate (which scales inside the logsumexp), this is the bound of each :math:`x_n`.

    The positional ``args`` are the data as the program takes them (rows of tensors are
    datapoints; other arguments pass through). Work is chunked over data (``data_chunk``
    rows) and particles (``particle_chunk``), by default so that a chunk has at most
    ``max_rows`` particle-rows (``None``: about two million particle-row features,
    :func:`~pyro_vae.infer.per_datapoint.default_max_rows`), and the log-mean-exp is
    accumulated across chunks: peak
    memory does not grow with :math:`K`. Guide sites may be discrete; no gradients are
    computed; modules run in eval mode.

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
    :returns: a tensor of shape ``(N,)``, or a :class:`BoundEstimate` with the standard
        error when ``return_error=True``.

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    accumulators, mode = accumulate_log_weights(
        model,
        guide,
        args,
        kwargs,
        make=StreamingLogMeanExp,
        num_particles=num_particles,
        data_chunk=data_chunk,
        particle_chunk=particle_chunk,
        max_rows=max_rows,
        plate_name=plate_name,
        capture=as_capture(capture),
    )
    values, errors = zip(*(a.result() for a in accumulators), strict=True)
    value = torch.cat(values)
    if return_error:
        return BoundEstimate(
            value=value, standard_error=torch.cat(errors), num_particles=num_particles, mode=mode
        )
    return value


def log_marginal(
    model: Callable, guide: Callable, *args: Any, num_particles: int = 5000, **kwargs: Any
) -> BoundEstimate:
    """The estimate :math:`\\log \\hat p(x) = \\mathcal L_K` with a large :math:`K` (default 5000)
    and its standard error, per datapoint. It is itself a (stochastic) lower bound in
    expectation, tight as :math:`K \\to \\infty` [1].

    References:
        [1] Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """
    return iwae(model, guide, *args, num_particles=num_particles, return_error=True, **kwargs)
