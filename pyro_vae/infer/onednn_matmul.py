"""A captured graph's float32 matrix multiplies on oneDNN's kernels instead of the BLAS's.

PyTorch's CPU build sends float32 ``mm`` and ``addmm`` to its BLAS (MKL in the x86 wheels),
whichever CPU it runs on, and keeps oneDNN for convolutions and lower precisions. Where the
BLAS is slow the difference is large: on an AMD EPYC host with AVX-512, MKL's ``sgemm`` ran
the training benchmark's layer (128 x 400 x 784) at 159-173 GFLOP/s and oneDNN's
``mkldnn::_linear_pointwise`` at 300-390 (see docs/benchmarks.md). The two libraries round
differently (they block and sum in other orders), so a graph rewritten here gives values and
gradients equal to the eager step's to float rounding, not bitwise.

A replayed graph calls :func:`onednn_linear` (an autograd function); a graph TorchInductor
compiles calls the same product as a dispatcher operator, :data:`LINEAR_OP`, which Inductor
leaves as an opaque kernel between the elementwise code it fuses (its own lowering of
oneDNN's linear is for frozen weights only). On a second AMD EPYC host with AVX-512 that
took the compiled training step from 0.76x to 0.60x the hand-written eager PyTorch step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.autograd.function import once_differentiable

from pyro_vae.errors import InputError

aten = torch.ops.aten
MATMULS = ("auto", "aten", "onednn")
"""The kernels a captured graph's matrix multiplies may run on: the graph's own (``aten``:
PyTorch's choice, bitwise the eager step), oneDNN's (``onednn``), or ``auto``
(:func:`resolve_matmul`)."""


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's dense linear kernel."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...) from ``/proc/cpuinfo``;
    ``""`` where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_capability() -> str:
    """The widest vector instructions PyTorch's kernels use here (``"AVX512"``, ``"AVX2"``,
    ``"DEFAULT"``, ...: :func:`torch.backends.cpu.get_cpu_capability`)."""
    return torch.backends.cpu.get_cpu_capability()


def resolve_matmul(matmul: str) -> str:
    """``matmul`` with ``"auto"`` resolved: ``"onednn"`` where oneDNN is available, the CPU is
    not Intel's and it has AVX-512, else ``"aten"``. On two AMD EPYC hosts with AVX-512, MKL's
    float32 GEMM ran at half oneDNN's rate; on an AMD EPYC host with AVX2 only, oneDNN's was
    the slower (the training step 0.98-1.01x the hand-written one on oneDNN's kernels against
    0.83-0.86x on MKL's; docs/benchmarks.md). The choice depends only on the machine and the
    build, so it is the same in every run on one machine, compiled or not."""
    check_matmul(matmul)
    if matmul != "auto":
        return matmul
    if not onednn_available() or cpu_vendor() in ("", "GenuineIntel"):
        return "aten"
    return "onednn" if cpu_capability().startswith("AVX512") else "aten"


def check_matmul(matmul: str) -> None:
    """Raise :class:`~pyro_vae.errors.InputError` for a ``matmul`` option that cannot be used."""
    if matmul not in MATMULS:
        raise InputError(f"matmul={matmul!r}: expected one of {', '.join(map(repr, MATMULS))}")
    if matmul == "onednn" and not onednn_available():
        raise InputError("matmul='onednn': this PyTorch build has no oneDNN (torch.backends.mkldnn)")


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:math:`x W^\\top + b` by oneDNN (``weight`` of shape ``(out, in)``; any strides)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _linear_backward(
    ctx: Any, grad: torch.Tensor, product: Callable[..., torch.Tensor]
) -> tuple[torch.Tensor | None, ...]:
    r"""The gradients of :math:`y = x W^\top + b` for the output's gradient :math:`g`:
    :math:`\partial x = g W`, :math:`\partial W = g^\top x`, :math:`\partial b = \sum_i g_i`
    (each only where its input needs one), the products by ``product(a, weight, None)``."""
    x, weight = ctx.saved_tensors
    needs_x, needs_weight, needs_bias = ctx.needs_input_grad
    has_bias = ctx.has_bias
    grad_x = product(grad, weight.t(), None) if needs_x else None
    grad_weight = product(grad.t(), x.t(), None) if needs_weight else None
    grad_bias = grad.sum(0) if needs_bias and has_bias else None
    return grad_x, grad_weight, grad_bias


class OneDNNLinear(torch.autograd.Function):
    r""":math:`y = x W^\top + b` with oneDNN's kernels forward and backward
    (:func:`_linear_backward`): what a replayed graph calls (the registered operator
    :data:`LINEAR_OP` costs some 20 microseconds more per product and its gradients, through
    the dispatcher)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _linear_backward(ctx, grad, _linear)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """:class:`OneDNNLinear` (a graph's call target: the generated replay calls it directly)."""
    return OneDNNLinear.apply(x, weight, bias)


# The same product as an operator of PyTorch's dispatcher, for graphs that TorchInductor
# compiles: Inductor calls it as an opaque kernel (its own lowering of oneDNN's linear
# wants the weight a frozen constant), traces it with the fake implementation below, and
# AOTAutograd differentiates it with the registered gradient.
torch.library.define("pyro_vae::onednn_linear", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor")


@torch.library.impl("pyro_vae::onednn_linear", "CPU")
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _linear(x, weight, bias)


@torch.library.register_fake("pyro_vae::onednn_linear")
def _linear_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def _linear_op_setup(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None  # as OneDNNLinear.forward keeps them


def _linear_op_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    return _linear_backward(ctx, grad, LINEAR_OP)


torch.library.register_autograd(
    "pyro_vae::onednn_linear", _linear_op_backward, setup_context=_linear_op_setup
)

LINEAR_OP = torch.ops.pyro_vae.onednn_linear.default
"""``torch.ops.pyro_vae.onednn_linear``: :func:`onednn_linear` as a dispatcher operator
(oneDNN's product forward and, registered with autograd, backward), what
:func:`use_onednn_matmul` writes into a graph that TorchInductor compiles."""


def _float32_cpu_matrix(node: Any) -> bool:
    """A node holding a dense float32 CPU matrix with no broadcast (stride-0) dimension."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return (
        isinstance(value, torch.Tensor)
        and value.dim() == 2
        and value.dtype == torch.float32
        and value.device.type == "cpu"
        and value.layout == torch.strided
        and all(stride > 0 or size == 1 for stride, size in zip(value.stride(), value.shape, strict=True))
    )


def use_onednn_matmul(graph: fx.GraphModule, *, compiled: bool = False) -> int:
    """Rewrite ``graph``'s float32 CPU matrix products (``mm(a, b)`` and ``addmm(bias, a, b)``
    with a bias of one value per column and the default scale factors) into
    :func:`onednn_linear` calls (with ``compiled=True``, for a graph TorchInductor compiles,
    into the operator :data:`LINEAR_OP`), in place; the number rewritten. The weight of
    :math:`a b` is :math:`b^\\top`, a view (``t(W)`` as ``nn.Linear`` traces becomes ``W``
    itself). Other products (batched, mixed dtypes, other devices) are left as they are."""
    replaced = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
            continue
        if node.target is aten.addmm.default:
            if node.kwargs or len(node.args) != 3:  # beta or alpha given
                continue
            bias, a, b = node.args
            bias_value = bias.meta.get("val") if isinstance(bias, fx.Node) else None
            if not (
                isinstance(bias_value, torch.Tensor)
                and bias_value.dim() == 1
                and bias_value.dtype == torch.float32
                and bias_value.device.type == "cpu"
            ):
                continue
        else:
            if node.kwargs or len(node.args) != 2:
                continue
            (a, b), bias = node.args, None
        if not (_float32_cpu_matrix(a) and _float32_cpu_matrix(b) and _float32_cpu_matrix(node)):
            continue
        if bias is not None and bias.meta["val"].shape[0] != node.meta["val"].shape[1]:
            continue
        with graph.graph.inserting_before(node):
            if isinstance(b, fx.Node) and b.target is aten.t.default:
                weight = b.args[0]
            else:
                weight = graph.graph.call_function(aten.t.default, (b,))
            new = graph.graph.call_function(LINEAR_OP if compiled else onednn_linear, (a, weight, bias))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.graph.erase_node(node)
        if isinstance(b, fx.Node) and b.target is aten.t.default and not b.users:
            graph.graph.erase_node(b)  # the transpose that fed the product (a view, pure)
        replaced += 1
    if replaced:
        graph.recompile()
    return replaced
