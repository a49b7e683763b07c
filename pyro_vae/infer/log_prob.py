"""Log-densities of sites whose distribution a particle plate has expanded, computed on the
parameters before expansion, and with fewer passes over memory where nothing is
differentiated (evaluation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.distributions.utils import _sum_rightmost

from pyro_vae.infer.modes import evaluating

_HALF_LOG_TWO_PI = math.log(math.sqrt(2 * math.pi))


def broadcast_shape(a: torch.Size, b: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(a, b)`` without its cost (about 10 microseconds, a pass of
    Python through ``torch._refs``): the shapes themselves when equal, as for most sites,
    else a plain loop over the dimensions. Raises ``RuntimeError`` for shapes that do not
    broadcast, as torch does."""
    if a == b:
        return a
    n = max(len(a), len(b))
    out = []
    for x, y in zip((1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b), strict=True):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise RuntimeError(f"shapes {tuple(a)} and {tuple(b)} do not broadcast")
    return torch.Size(out)


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every broadcast dimension (stride 0, size > 1) narrowed to size 1: the same
    values under broadcasting, without the repeated elements."""
    if t.dim() == 0 or all(s != 0 or n == 1 for s, n in zip(t.stride(), t.shape, strict=True)):
        return t
    index = tuple(
        slice(0, 1) if s == 0 and n > 1 else slice(None) for s, n in zip(t.stride(), t.shape, strict=True)
    )
    return t[index]


def _normal_log_prob(fn: Normal, value: torch.Tensor) -> torch.Tensor:
    """``Normal.log_prob`` with the location and scale compacted: the same operations on the
    same numbers, so the same values bitwise, but :math:`\\sigma^2` and :math:`\\log\\sigma` are
    computed once per distinct parameter instead of once per particle (a plate of :math:`K`
    particles expands the parameters :math:`K`-fold without copying them)."""
    if fn._validate_args:
        fn._validate_sample(value)
    loc, scale = compact(fn.loc), compact(fn.scale)
    if lean(value, loc, scale) and _fits_in_place(value, loc, scale):
        out = _normal_log_prob_in_place(value, loc, scale)
    else:
        out = -((value - loc) ** 2) / (2 * scale**2) - scale.log() - _HALF_LOG_TWO_PI
    shape = broadcast_shape(value.shape, fn.batch_shape + fn.event_shape)
    return out if out.shape == shape else out.expand(shape)


def _fits_in_place(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether ``value - loc`` can hold the whole result: the scale neither promotes its dtype
    nor broadens its shape."""
    shape = broadcast_shape(value.shape, loc.shape)
    return torch.result_type(value, loc) == scale.dtype and shape == broadcast_shape(shape, scale.shape)


def _normal_log_prob_in_place(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """:func:`_normal_log_prob`'s arithmetic in evaluation (:func:`lean`), bitwise the same:
    one tensor of the broadcast shape, written in place, instead of six, and the negation
    moved onto the divisor (:math:`(-a)/b = a/(-b)` exactly in floating point)."""
    out = value - loc
    out.square_()
    out.div_(-2 * scale**2)
    out.sub_(scale.log())
    return out.sub_(_HALF_LOG_TWO_PI)


def differentiated(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` here."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def lean(*tensors: torch.Tensor) -> bool:
    """Whether a log-density may take its evaluation path (fewer passes, in place): inside an
    evaluator (:func:`~pyro_vae.infer.modes.evaluation_mode`) and with nothing differentiated.
    Elsewhere (a training step, its captured graph and the eager run that checks the graph)
    densities are computed as PyTorch computes them."""
    return evaluating() and not differentiated(*tensors)


def _softplus_threshold(dtype: torch.dtype) -> float:
    """Where :math:`\\log \\sigma(l) = l` to the dtype's precision: ``F.softplus(l, beta=-1)``
    returns :math:`l` below minus its threshold, dropping :math:`\\log(1 + e^{l}) < e^{l}`,
    which is below half an ulp of :math:`l` past 20 in single or lower precision and past 40
    in double."""
    return 40.0 if torch.finfo(dtype).eps < 1e-10 else 20.0


def bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
    """:math:`\\log p(x \\mid l) = \\log \\sigma(l) - (1 - x)\\,l`, Bernoulli with logits
    :math:`l`, summed over the ``event_dims`` rightmost dimensions: ``Bernoulli(logits=l)
    .to_event(event_dims).log_prob(x)``.

    In evaluation (:func:`lean`) it is PyTorch's formula with fewer passes over memory: the
    log-sigmoid as ``F.softplus(l, beta=-1)`` (PyTorch's ``logsigmoid`` also writes a buffer
    for the backward pass), :math:`1 - x` on the compacted data (once per datapoint, not
    once per particle), one multiply-subtract in place and the sum: one tensor of the
    broadcast shape where ``binary_cross_entropy_with_logits`` makes three, a third of
    evaluating :math:`\\log p(x \\mid z)` for many particles. Equal to PyTorch's to the
    dtype's rounding, not bitwise (each term within :math:`4\\epsilon (|l_d| + 1)` of double
    precision, as PyTorch's is; zeros may differ in sign), and at infinite logits the same
    :math:`-\\infty` and NaN. With gradients (training), PyTorch's own call is used, whose
    backward pass is one fused kernel.
    """
    shape = broadcast_shape(logits.shape, value.shape)
    if logits.dtype != value.dtype or not lean(logits, value):  # mixed dtypes: torch's promotion
        bce = F.binary_cross_entropy_with_logits(logits.expand(shape), value.expand(shape), reduction="none")
        return -_sum_rightmost(bce, event_dims) if event_dims else -bce  # summed first: a pass fewer
    small, x = compact(logits), compact(value)
    out = F.softplus(small, beta=-1, threshold=_softplus_threshold(small.dtype))  # log sigmoid(l)
    if out.shape == broadcast_shape(out.shape, x.shape):
        out.addcmul_(1 - x, small, value=-1)  # in place: the softplus is this function's own tensor
    else:
        out = torch.addcmul(out, 1 - x, small, value=-1)
    if event_dims:
        out = _sum_rightmost(_full_events(out, shape, event_dims), event_dims)
    full = shape[: len(shape) - event_dims]
    return out if out.shape == full else out.expand(full)


def _full_events(t: torch.Tensor, shape: torch.Size, event_dims: int) -> torch.Tensor:
    """``t`` broadcast to the ``event_dims`` rightmost sizes of ``shape``: compaction narrows
    any dimension that no operand holds in full, an event dimension too (a logit shared by
    every feature, data expanded from one column), and a sum over events must count every
    element."""
    n = len(shape)
    lead = (1,) * (n - t.dim()) + tuple(t.shape)
    target = lead[: n - event_dims] + tuple(shape[n - event_dims :])
    return t if tuple(t.shape) == target else t.expand(target)


def site_log_prob(fn: Distribution, value: torch.Tensor) -> torch.Tensor:
    """``fn.log_prob(value)``, computed on compacted parameters for a Normal or a Bernoulli
    (possibly inside ``Independent``) that does not override ``log_prob`` (for the Bernoulli,
    with fewer passes in evaluation: :func:`bernoulli_log_prob`); other
    distributions as they are."""
    base, ndims = fn, 0
    if isinstance(fn, Independent) and type(fn).log_prob is Independent.log_prob:
        base, ndims = fn.base_dist, fn.reinterpreted_batch_ndims
    if isinstance(base, Normal) and type(base).log_prob is Normal.log_prob:
        lp = _normal_log_prob(base, value)
        return _sum_rightmost(lp, ndims) if ndims else lp
    if isinstance(base, Bernoulli) and type(base).log_prob is Bernoulli.log_prob:
        if base._validate_args:
            base._validate_sample(value)
        return bernoulli_log_prob(base.logits, value, ndims)
    return fn.log_prob(value)
