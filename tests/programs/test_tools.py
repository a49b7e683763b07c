"""Every tool of pyro_vae on every program of the corpus: fit (minibatch and full batch), the
bounds, the diagnostics and compare, checked against the programs' exact log p(x)."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vae.bounds import elbo, elbo_gap, iwae, log_marginal
from pyro_vae.comparison import compare
from pyro_vae.diagnostics import (
    active_units,
    importance_diagnostics,
    kl_per_dimension,
    posterior_inference_data,
)
from pyro_vae.errors import InputError
from pyro_vae.infer import frozen_evaluation
from pyro_vae.infer.onednn_matmul import onednn_available
from pyro_vae.infer.particles import record_program
from pyro_vae.train import fit

from . import CASES

ALL = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
N = 24


def _loss(case):
    if case.name.startswith("enumerated"):
        return TraceEnum_ELBO(max_plate_nesting=1)
    return Trace_ELBO() if case.discrete else None  # None: fit's default, MeanFieldELBO


def _module_state(program):
    return [(m.training, {k: v.detach().clone() for k, v in m.state_dict().items()}) for m in program.modules]


def _assert_unchanged(program, before):
    for m, (training, state) in zip(program.modules, before, strict=True):
        assert m.training == training
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), k


def _continuous_site(program, data):
    """The first reparameterized latent site of the guide, or None."""
    with frozen_evaluation():
        sites = record_program(program.guide, data, {}).sites
    return next((n for n, s in sites.items() if not s.is_observed and s.fn.has_rsample), None)


@ALL
@pytest.mark.parametrize("batch_size", [8, None], ids=["minibatch", "full-batch"])
def test_fit_trains_every_program_and_scales_every_minibatch(case, batch_size):
    program, data = case.build(), case.data(N)
    for m in program.modules:
        m.train()
    res = fit(
        program.model, program.guide, data, loss=_loss(case), epochs=2, batch_size=batch_size, progress=False
    )
    last = res.history[-1]
    assert math.isfinite(last["train_objective"]) and math.isfinite(last["train_elbo"]), last
    expected = "full batch" if batch_size is None else "program" if case.has_num_data else "rescaled"
    assert res.scaling == (expected,)
    assert all(m.training for m in program.modules)  # the metrics ran in eval mode and switched back


@ALL
def test_bounds_are_ordered_and_below_the_exact_log_marginal(case):
    """ELBO <= L_K <= log p(x) within standard errors, per datapoint and on average, with the
    guide factors, auxiliary terms and scales of training left out; L_K with many particles
    closes most of the ELBO gap; nothing the evaluation ran changed the program's modules."""
    program, data = case.build(), case.data(N)
    if program.exact_log_p is None:
        pytest.skip("no closed form")
    before = _module_state(program)
    exact = program.exact_log_p(*data).detach()
    k = 2000 if case.broadcasts else 300
    el = elbo(program.model, program.guide, *data, num_particles=200, return_error=True)
    lm = log_marginal(program.model, program.guide, *data, num_particles=k)
    _assert_unchanged(program, before)
    assert el.mode == lm.mode == ("vectorized" if case.broadcasts else "sequential")
    assert (el.value < exact + 4 * el.standard_error + 1e-9).all()
    assert (lm.value < exact + 4 * lm.standard_error + 1e-9).all()
    assert (lm.value > el.value - 4 * el.standard_error).all()
    gap, closed = (exact - el.value).mean(), (lm.value - el.value).mean()
    print(f"{case.name}: ELBO gap {gap:.3f}, closed by L_{k} {closed / gap:.1%}")
    assert gap > 0.05 and closed > 0.8 * gap
    small = iwae(program.model, program.guide, *data, num_particles=5)
    assert small.shape == (N,) and torch.isfinite(small).all()
    g = elbo_gap(program.model, program.guide, *data, num_particles=k, elbo_particles=50)
    assert (g.gap.value > -4 * g.gap.standard_error).all()


@ALL
def test_diagnostics_work_or_say_why(case):
    program, data = case.build(), case.data(N)
    before = _module_state(program)
    diag = importance_diagnostics(program.model, program.guide, *data, num_particles=50)
    assert diag.k_hat.shape == (N,) and torch.isfinite(diag.ess).all()
    site = _continuous_site(program, data)
    if site is not None:
        idata = posterior_inference_data(program.model, program.guide, *data, num_samples=20, site=site)
        assert idata.posterior[site].shape[:3] == (1, 20, N)
        try:
            au = active_units(program.guide, *data, site=site)
            kl = kl_per_dimension(program.model, program.guide, *data, site=site)
        except InputError as e:  # a clear refusal, naming the site, is the contract
            assert site in str(e)
        else:
            assert au.variance.shape == kl.shape and (kl >= -1e-9).all()
    _assert_unchanged(program, before)


@ALL
@pytest.mark.filterwarnings("ignore:(?s).*If you want to enumerate sites:UserWarning")  # on purpose
def test_compare_runs_and_labels_its_reference(case):
    program, data = case.build(), case.data(N)
    names = ["score", "enum"] if case.discrete else ["score"]
    result = compare(
        program.model,
        program.guide,
        data,
        names,
        validation=case.data(8),
        num_gradient_samples=3,
        gradient_batch_size=8,
        warmup_steps=0,
        epochs=1,
        batch_size=8,
        eval_particles=3,
        reference_draws=4,
        reference_repeats=2,
        progress=False,
    )
    assert [r.name for r in result.results] == names
    if case.all_discrete:
        assert result.exact.startswith("exact")
    elif case.discrete:
        assert result.exact.startswith("Monte Carlo reference")
    else:
        assert "no discrete" in result.exact
    guide_rows = [r for r in result.rows() if r["group"] == "guide"]
    assert guide_rows, "the encoder's parameters are found by use, wherever pyro.module is called"
    assert pyro.get_param_store().keys() == set()


@pytest.mark.parametrize("name", ["enumerated_parallel", "enumerated_sequential"])
def test_rescaled_minibatches_under_trace_enum_elbo_are_exact(name):
    """Pyro's TraceEnum_ELBO sums the label out exactly, so with the parameters held still one
    epoch of minibatches of the rescaled program gives exactly the data set's mean ELBO, which
    pyro_vae's own enumeration computes independently."""
    from pyro_vae.estimators import exact_elbo

    case = CASES[name]
    program, data = case.build(), case.data(N)
    res = fit(
        program.model,
        program.guide,
        data,
        loss=TraceEnum_ELBO(max_plate_nesting=1),
        optimizer=lambda params: torch.optim.SGD(params, lr=1e-30),
        epochs=1,
        batch_size=8,
        progress=False,
    )
    exact = exact_elbo(program.model, program.guide, *data).mean().item()
    assert res.scaling == ("rescaled",)
    assert res.history[0]["train_objective"] == pytest.approx(exact, rel=1e-9)


def _program_state(program, res):
    modules = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in program.modules]
    return modules, {k: v.detach().clone() for k, v in res.param_state["params"].items()}


FLOAT64_ONLY = {"bare_params"}
"""Programs that make their parameters in float64 themselves (the others follow their data)."""


def _built(case, *, float32=False):
    """``case``'s program and data; with ``float32``, its modules and tensor data in float32
    (the corpus is float64, whose products oneDNN leaves to PyTorch), unless the program
    makes float64 parameters itself (:data:`FLOAT64_ONLY`)."""
    program, data = case.build(), case.data(N)
    if float32 and case.name not in FLOAT64_ONLY:
        for m in program.modules:
            m.float()
        data = tuple(t.float() if isinstance(t, torch.Tensor) else t for t in data)
    return program, data


def _fit_program(case, *, capture_after, matmul="aten", float32=False, **fit_options):
    """``case``'s program fitted for three epochs from seed 0, modules in training mode:
    (the fit's result, the program's state)."""
    from pyro_vae.estimators import ScoreFunctionELBO

    torch.manual_seed(0)
    program, data = _built(case, float32=float32)
    for m in program.modules:
        m.train()
    loss = ScoreFunctionELBO() if case.discrete else None
    options = {"epochs": 3, "batch_size": 8, "progress": False, **fit_options}
    res = fit(
        program.model, program.guide, data, loss=loss, capture_after=capture_after, matmul=matmul, **options
    )
    return res, _program_state(program, res)


@pytest.mark.parametrize(
    "case", [c for c in CASES.values() if not c.name.startswith("enumerated")], ids=lambda c: c.name
)
def test_fits_captured_step_is_bitwise_the_eager_step(case):
    """fit's default step, captured and replayed once a structure is known (here after one
    eager step), trains every program exactly as the eager step does: the same objectives,
    parameters and module buffers (BatchNorm's running statistics), or says why it stayed eager."""
    runs = [_fit_program(case, capture_after=c) for c in (None, 1)]
    (eager, (eager_modules, eager_params)), (captured, (captured_modules, captured_params)) = runs
    assert captured.captured_steps > 0 or captured.eager_reason, case.name
    assert [r["train_objective"] for r in eager.history] == [r["train_objective"] for r in captured.history]
    assert eager_params.keys() == captured_params.keys()
    for k in eager_params:
        assert torch.equal(eager_params[k], captured_params[k]), k
    for a, b in zip(eager_modules, captured_modules, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k


@ALL
def test_captured_evaluation_is_bitwise_the_eager_evaluation(case):
    """iwae with a kept CapturedLogWeights, twice, gives every program the eager bound's
    values and standard errors bitwise (validation off, as in the replays), leaves its
    modules as they were, and replays chunks or says why it stayed eager."""
    from pyro_vae.infer.captured_log_weights import CapturedLogWeights

    program, data = case.build(), case.data(N)
    before = _module_state(program)
    capture = CapturedLogWeights()
    for call in range(2):
        runs = []
        for c in (None, capture):
            torch.manual_seed(call)
            with pyro.validation_enabled(False):
                runs.append(
                    iwae(
                        program.model,
                        program.guide,
                        *data,
                        num_particles=6,
                        max_rows=12,
                        return_error=True,
                        capture=c,
                    )
                )
        eager, captured = runs
        assert torch.equal(eager.value, captured.value), case.name
        assert torch.equal(eager.standard_error, captured.standard_error), case.name
        assert eager.mode == captured.mode
    _assert_unchanged(program, before)
    assert capture.captured_chunks > 0 or capture.fallback_reason, case.name
    print(f"{case.name}: {capture.captured_chunks} chunks replayed {capture.fallback_reason}")


needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


@needs_onednn
@pytest.mark.parametrize(
    "case", [c for c in CASES.values() if not c.name.startswith("enumerated")], ids=lambda c: c.name
)
def test_fits_step_on_onednn_trains_every_program_as_the_eager_step_to_rounding(case):
    """With ``matmul="onednn"`` the replayed steps' matrix products run on oneDNN's kernels:
    every program, in float32, trains as with the eager step to float rounding (objectives,
    parameters, module buffers), or says why it stayed eager. With plain SGD: Adam divides
    each gradient by its own running size, so a parameter whose gradient is rounding noise
    alone (a bias feeding BatchNorm, which removes it) moves by the learning rate in a
    direction the rounding picks, whichever kernels run."""

    def sgd(params):
        return torch.optim.SGD(params, lr=1e-3)

    runs = [
        _fit_program(case, capture_after=None, float32=True, optimizer=sgd),
        _fit_program(case, capture_after=1, matmul="onednn", float32=True, optimizer=sgd),
    ]
    (eager, (eager_modules, eager_params)), (fast, (fast_modules, fast_params)) = runs
    assert fast.captured_steps > 0 or fast.eager_reason, case.name
    on_onednn = fast.captured_steps > 0 and case.name not in FLOAT64_ONLY
    assert fast.matmul == ("onednn" if on_onednn else "aten")
    objectives = [torch.tensor([r["train_objective"] for r in run.history]) for run in (eager, fast)]
    torch.testing.assert_close(objectives[1], objectives[0], rtol=1e-5, atol=1e-4)
    assert eager_params.keys() == fast_params.keys()
    for k in eager_params:
        torch.testing.assert_close(fast_params[k], eager_params[k], rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(eager_modules, fast_modules, strict=True):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@needs_onednn
@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["whole_module", "batchnorm_dropout", "guide_factor", "discrete_then_continuous"]
)
def test_fits_step_compiled_on_onednn_trains_programs_as_the_eager_step_to_rounding(name):
    """``compile=True, matmul="onednn"``: the step compiled by TorchInductor with oneDNN's
    products (forward and gradients) trains programs written in Pyro's idioms (a whole
    module, BatchNorm and dropout, a guide factor, a discrete site before a continuous one)
    as the eager step does, to float rounding; or it says why it was not compiled so."""
    from pyro_vae.infer.captured import compiler_found

    if not compiler_found():
        pytest.skip("no C++ compiler for TorchInductor")
    case = CASES[name]

    def sgd(params):
        return torch.optim.SGD(params, lr=1e-3)

    runs = [
        _fit_program(case, capture_after=None, float32=True, optimizer=sgd),
        _fit_program(case, capture_after=1, matmul="onednn", float32=True, optimizer=sgd, compile=True),
    ]
    (eager, (eager_modules, eager_params)), (fast, (fast_modules, fast_params)) = runs
    assert fast.captured_steps > 0 or fast.eager_reason, name
    if fast.captured_steps:
        assert fast.compiled and fast.matmul == "onednn", name
    objectives = [torch.tensor([r["train_objective"] for r in run.history]) for run in (eager, fast)]
    torch.testing.assert_close(objectives[1], objectives[0], rtol=1e-5, atol=1e-4)
    for k in eager_params:
        torch.testing.assert_close(fast_params[k], eager_params[k], rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(eager_modules, fast_modules, strict=True):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    print(f"{name}: compiled={fast.compiled}, kernels={fast.matmul}, replayed {fast.captured_steps}")


@needs_onednn
@ALL
def test_captured_evaluation_on_onednn_is_the_eager_evaluation_to_rounding(case):
    """iwae with a kept ``CapturedLogWeights(matmul="onednn")`` gives every program the eager
    bound to float rounding in float32, leaves its modules as they were, and replays chunks
    on oneDNN's kernels or says why it stayed eager."""
    from pyro_vae.infer.captured_log_weights import CapturedLogWeights

    program, data = _built(case, float32=True)
    before = _module_state(program)
    capture = CapturedLogWeights(matmul="onednn")
    for call in range(2):
        runs = []
        for c in (None, capture):
            torch.manual_seed(call)
            with pyro.validation_enabled(False):
                options = {"num_particles": 6, "max_rows": 12, "return_error": True}
                runs.append(iwae(program.model, program.guide, *data, capture=c, **options))
        eager, fast = runs
        torch.testing.assert_close(fast.value, eager.value, rtol=1e-5, atol=1e-4, msg=case.name)
        torch.testing.assert_close(
            fast.standard_error, eager.standard_error, rtol=1e-4, atol=1e-5, msg=case.name
        )
        assert eager.mode == fast.mode
    _assert_unchanged(program, before)
    assert capture.captured_chunks > 0 or capture.fallback_reason, case.name
    graphs = [g for g in capture._cache.graphs.values() if g is not None]
    if case.name not in FLOAT64_ONLY:
        assert all(g.kernels == "onednn" for g in graphs), case.name
