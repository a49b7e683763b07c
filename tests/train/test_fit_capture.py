"""fit's default step: captured and replayed once a structure is known, bitwise the eager step."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae.errors import CaptureFallbackWarning, InputError
from pyro_vae.estimators import VIMCO, ScoreFunctionELBO
from pyro_vae.estimators.baselines import DecayingAverageBaseline
from pyro_vae.infer import MeanFieldELBO
from pyro_vae.infer.onednn_matmul import onednn_linear, resolve_matmul
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit
from pyro_vae.train.step import FIT_CAPTURE_AFTER, step_loss


def _x(n=64, d=6, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def _fit_vae(**options):
    torch.manual_seed(0)
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
    res = fit(vae.model, vae.guide, _x(), epochs=4, batch_size=8, lr=0.05, progress=False, **options)
    return res, [p.detach().clone() for p in vae.parameters()]


@pytest.mark.parametrize("matmul", ["aten", None], ids=["aten", "default"])
def test_the_default_step_is_captured_and_bitwise_the_eager_step_on_pytorchs_kernels(matmul):
    """The step captured and replayed: bitwise the eager step with ``matmul="aten"``, and with
    the default (``"auto"``) where it resolves so; to float rounding where the machine's
    kernels are oneDNN's (``result.matmul`` says which ran)."""
    options = {} if matmul is None else {"matmul": matmul}
    (eager, eager_params), (default, default_params) = _fit_vae(capture_after=None), _fit_vae(**options)
    assert eager.captured_steps == 0 and eager.eager_reason == "capture_after=None"
    # 32 steps of one structure: eager FIT_CAPTURE_AFTER times, then replayed
    assert default.captured_steps == 32 - FIT_CAPTURE_AFTER, default.eager_reason
    assert default.eager_reason == ""
    assert default.matmul == resolve_matmul(matmul or "auto")
    objectives = [[r["train_objective"] for r in res.history] for res in (eager, default)]
    if default.matmul == "aten":
        assert objectives[0] == objectives[1]
        for a, b in zip(eager_params, default_params, strict=True):
            assert torch.equal(a, b)
    else:
        got, expected = map(torch.tensor, objectives[::-1])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        for a, b in zip(eager_params, default_params, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_capture_after_is_checked_before_work():
    with pytest.raises(InputError, match="capture_after"):
        _fit_vae(capture_after=0)


def test_losses_with_state_of_their_own_and_pyro_elbos_stay_eager():
    assert step_loss(pyro.infer.Trace_ELBO()).__class__ is pyro.infer.Trace_ELBO
    stateful = ScoreFunctionELBO(baseline=DecayingAverageBaseline())
    assert step_loss(stateful) is stateful
    assert step_loss(MeanFieldELBO(), capture_after=None).__class__ is MeanFieldELBO
    assert type(step_loss(ScoreFunctionELBO())).__name__ == "CapturedLoss"  # no baseline: no state
    assert type(step_loss(VIMCO(num_particles=3))).__name__ == "CapturedLoss"
    res, _ = _fit_vae(loss=pyro.infer.Trace_ELBO())
    assert res.captured_steps == 0 and "ParticleLoss" in res.eager_reason


class _Switching(torch.nn.Module):
    """A program with Python state outside its arguments: a likelihood scale read from an
    attribute (``per_call`` adds to it on every call), which a captured graph would freeze."""

    def __init__(self, per_call=0.0):
        super().__init__()
        self.vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
        self.scale, self.per_call = 1.0, per_call

    def model(self, x, num_data=None):
        self.scale += self.per_call
        with poutine.scale(scale=self.scale):
            self.vae.model(x, num_data=num_data)

    def guide(self, x, num_data=None):
        self.vae.guide(x, num_data=num_data)


def _fit_switching(capture_after, *, per_call=0.0, switch_at=None):
    torch.manual_seed(0)
    program = _Switching(per_call)
    steps = []

    def transform(batch):  # the test's hook into the loop: change the program's state mid-run
        steps.append(1)
        if len(steps) == switch_at:
            program.scale = 2.0
        return batch

    res = fit(
        program.model,
        program.guide,
        _x(),
        epochs=3,
        batch_size=8,
        lr=0.05,
        progress=False,
        capture_after=capture_after,
        transform=transform,
    )
    return res, [p.detach().clone() for p in program.parameters()]


def test_a_program_whose_state_changes_every_call_is_never_replayed():
    """The capture's own check (trace, then an eager run, then the graph) sees the change. (The
    run is not the eager run's: the capture's extra calls moved the program's counter on, as
    the metrics' calls do.)"""
    captured, _ = _fit_switching(2, per_call=0.01)
    assert captured.captured_steps == 0
    assert "differs from the eager one" in captured.eager_reason


def test_state_that_changes_later_is_caught_by_a_checked_replay():
    """8 steps an epoch; steps 1-2 eager, replays from step 3 on, checked at replays 1, 2, 4, 8
    and at the first step of every epoch (steps 9 and 17). Changed before step 13, the stale
    graph runs until the check at step 17, which fails: 14 replays, then eager."""
    with pytest.warns(CaptureFallbackWarning, match="depends on state outside"):
        res, _ = _fit_switching(2, switch_at=13)
    assert "depends on state outside" in res.eager_reason
    assert res.captured_steps == 14


def test_a_compiled_step_equals_the_eager_step_to_float_rounding():
    """``fit(compile=True)``: the captured step compiled by TorchInductor replays every step after
    the first, and trains as the eager step does to float rounding (a reordered sum is off by
    about 1e-7 of a value's scale in float32; a wrong graph by order one)."""
    (eager, eager_params), (compiled, compiled_params) = (
        _fit_vae(capture_after=None),
        _fit_vae(capture_after=1, compile=True),
    )
    assert compiled.compiled and compiled.captured_steps == 32 - 1, compiled.eager_reason
    got = torch.tensor([r["train_objective"] for r in compiled.history])
    expected = torch.tensor([r["train_objective"] for r in eager.history])
    assert torch.allclose(got, expected, rtol=1e-4, atol=0), (got, expected)
    for a, b in zip(eager_params, compiled_params, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    assert not eager.compiled


def test_compile_options_are_checked_before_work(monkeypatch):
    with pytest.raises(InputError, match="capture_after=None captures nothing"):
        _fit_vae(capture_after=None, compile=True)
    with pytest.raises(InputError, match="matmul='blas'"):
        _fit_vae(compile=True, matmul="blas")
    from torch._inductor import cpp_builder

    def no_compiler():
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(InputError, match="needs a C\\+\\+ compiler"):
        _fit_vae(compile=True)


def _fit_in_two(tmp_path, *, keep_capture_state=True, **options):
    """Four epochs in one run, and two then two more from the checkpoint, of a VAE wide enough
    (784-48-4) that oneDNN's and MKL's products round differently; both runs' parameters."""
    from pyro_vae.train import load_checkpoint, save_checkpoint

    x, ckpt = _x(d=784), tmp_path / "c.pt"

    def run(epochs, **more):
        torch.manual_seed(0)
        vae = VAE(Bernoulli(784), latent_dim=4, hidden=(48,))
        res = fit(
            vae.model, vae.guide, x, epochs=epochs, batch_size=8, lr=0.01, progress=False, **options, **more
        )
        return res, [p.detach().clone() for p in vae.parameters()]

    _, whole = run(4)
    run(2, checkpoint=ckpt)
    if not keep_capture_state:
        saved = load_checkpoint(ckpt)
        del saved["capture_state"]
        save_checkpoint(ckpt, saved)
    res, resumed = run(4, checkpoint=ckpt, resume=True)
    return res, whole, resumed


@pytest.mark.skipif(
    not __import__("pyro_vae.infer.onednn_matmul", fromlist=["x"]).onednn_available(), reason="no oneDNN"
)
def test_a_resumed_run_replays_where_the_run_it_continues_did(tmp_path):
    """With oneDNN's kernels the replays round otherwise than the eager steps; the checkpoint's
    capture state makes the resumed run replay from its first step, as the uninterrupted run
    did at those steps, so the two end bit for bit equal. Without it the resumed run's first
    ``capture_after`` steps run eagerly and the runs agree only to rounding."""
    options = {"matmul": "onednn", "capture_after": 3}
    res, whole, resumed = _fit_in_two(tmp_path, **options)
    assert res.matmul == "onednn" and res.captured_steps == 16  # every step after the resume
    for a, b in zip(whole, resumed, strict=True):
        assert torch.equal(a, b)
    _, whole, eager_first = _fit_in_two(tmp_path, keep_capture_state=False, **options)
    x, w = _x(8, 784), torch.randn(48, 784, generator=torch.Generator().manual_seed(1))
    if torch.equal(x @ w.t(), onednn_linear(x, w)):  # kernels that round alike here: nothing to tell apart
        return
    assert not all(torch.equal(a, b) for a, b in zip(whole, eager_first, strict=True))
    for a, b in zip(whole, eager_first, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_fit_compiles_by_default_only_runs_long_enough_to_pay_back(monkeypatch):
    from pyro_vae.infer import captured
    from pyro_vae.train.step import COMPILE_STEPS, resolve_compile

    monkeypatch.setattr(captured, "check_compile", lambda compile: None)  # a compiler, found
    long = {"steps": COMPILE_STEPS, "capture_after": 20, "distributed": False}
    assert resolve_compile(None, **long)
    assert not resolve_compile(None, **{**long, "steps": COMPILE_STEPS - 1})
    assert not resolve_compile(None, **{**long, "capture_after": None})
    assert not resolve_compile(None, **{**long, "distributed": True})
    assert not resolve_compile(False, **long) and resolve_compile(True, **{**long, "steps": 1})

    def no_compiler(compile):
        raise InputError("no compiler")

    monkeypatch.setattr(captured, "check_compile", no_compiler)
    assert not captured.compiler_found() and not resolve_compile(None, **long)


def test_the_default_compiles_only_the_structures_that_run_often(monkeypatch):
    """On a run long enough to compile (``COMPILE_STEPS``, lowered here), ``fit``'s default
    compiles the full batches' structure once it has run ``FIT_COMPILE_AFTER`` times, not the
    smaller last batch's (captured, replayed uncompiled); ``compile=True`` compiles both at
    capture. A stand-in compiler returning the graph itself counts the compiles."""
    import importlib

    from pyro_vae.infer import captured, graph_capture

    fit_module = importlib.import_module("pyro_vae.train.fit")
    from pyro_vae.train import step

    compiled = []

    def identity(module, inputs):
        compiled.append(module)
        return module

    monkeypatch.setattr(captured, "check_compile", lambda compile: None)
    monkeypatch.setattr(captured, "compiler_found", lambda: True)
    monkeypatch.setattr(step, "compiler_found", lambda: True)
    monkeypatch.setattr(graph_capture, "compile_graph", identity)
    monkeypatch.setattr(step, "COMPILE_STEPS", 32)
    monkeypatch.setattr(fit_module, "FIT_COMPILE_AFTER", 10)
    x = _x(n=60)  # 7 batches of 8 and one of 4 an epoch: 28 and 4 runs in 4 epochs

    def run(**options):
        torch.manual_seed(0)
        vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
        return fit(
            vae.model,
            vae.guide,
            x,
            epochs=4,
            batch_size=8,
            lr=0.05,
            progress=False,
            capture_after=2,
            **options,
        )

    default = run()
    assert len(compiled) == 1 and default.compiled
    assert default.captured_steps == (28 - 2) + (4 - 2), default.eager_reason
    compiled.clear()
    assert run(compile=True).compiled and len(compiled) == 2


def test_a_default_fit_imports_neither_torchdynamo_nor_sympy():
    """The default training loop (replayed steps, FusedAdam, a checkpoint a epoch) in a fresh
    process: TorchDynamo (imported by torch.optim's wrappers) and SymPy (by
    ``torch.autograd.backward``'s shape check) cost 0.6-0.8 s of the default ``pyro-vae train``
    on the AVX-512 AMD host of docs/benchmarks.md, and neither is needed."""
    import subprocess
    import sys

    code = """
import sys, tempfile, torch, pyro
names = ("torch._dynamo", "sympy")
before = {m for m in names if m in sys.modules}  # what torch and Pyro import themselves
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit
torch.manual_seed(0)
vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
x = (torch.rand(64, 6) < 0.4).float()
with tempfile.TemporaryDirectory() as d:
    options = {"epochs": 4, "batch_size": 8, "progress": False, "capture_after": 2}
    res = fit(vae.model, vae.guide, x, checkpoint=d + "/c.pt", **options)
assert res.captured_steps > 0, res.eager_reason
print(sorted(m for m in names if m in sys.modules and m not in before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
