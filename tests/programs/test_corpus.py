"""Sanity checks of the program corpus with Pyro and torch alone (no pyro_vae), so the corpus
is verified independently of the library whose tools will later be run over it.

tests/conftest.py clears the param store before and after every test, turns validation on
and seeds the RNGs, so every check here is deterministic.
"""

import inspect
import math
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from pyro.optim import Adam
from pyro.poutine.util import site_is_subsample
from torch import nn

from tests.programs import CASES, Case, Program

REQUIRED = {
    "whole_module",
    "batchnorm_dropout",
    "no_broadcast",
    "enumerated_parallel",
    "enumerated_sequential",
    "guide_factor",
    "poutine_scale",
    "nested_plates",
    "chain",
    "discrete_then_continuous",
    "no_num_data",
    "bare_params",
    "extra_argument",
    "num_data",
    "ignores_num_data",
}
N = 12
ALL = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))


# --------------------------------------------------------------------------- helpers


def _traces(case: Case, program: Program, data, **extra_kwargs):
    kwargs = {**case.kwargs, **extra_kwargs}
    guide_trace = poutine.trace(program.guide).get_trace(*data, **kwargs)
    model_trace = poutine.trace(poutine.replay(program.model, trace=guide_trace)).get_trace(*data, **kwargs)
    return model_trace, guide_trace


def _sample_sites(trace):
    """Sample sites, less the ones every sized plate records under its own name."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def _max_plate_nesting(case: Case, program: Program, data) -> int:
    dims = [
        -frame.dim
        for trace in _traces(case, program, data)
        for site in _sample_sites(trace)
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims)


def _elbo(case: Case, max_plate_nesting: int, **options):
    if case.all_discrete:
        return TraceEnum_ELBO(max_plate_nesting=max_plate_nesting, **options)
    return Trace_ELBO(max_plate_nesting=max_plate_nesting, **options)


def _data_frame(site):
    (frame,) = [f for f in site["cond_indep_stack"] if f.name == "data"]
    return frame


def _per_datapoint(log_prob: torch.Tensor, data_dim: int, nesting: int) -> torch.Tensor:
    """Sum a log-prob tensor with `nesting` batch dimensions (leftmost: particles, unless the
    data plate is the leftmost) over every dimension but the particles' and the data plate's."""
    log_prob = log_prob.reshape((1,) * (nesting - log_prob.dim()) + log_prob.shape)
    other = [i for i in range(nesting) if i not in (0, nesting + data_dim)]
    return log_prob.sum(other) if other else log_prob


def _snapshot(program: Program):
    """Every trainable tensor of the program: module parameters and param-store values."""
    values = {
        f"module{i}.{name}": p.detach().clone()
        for i, m in enumerate(program.modules)
        for name, p in m.named_parameters()
    }
    for name, value in pyro.get_param_store().items():
        values.setdefault(f"store.{name}", value.detach().clone())
    return values


def _exact(program: Program, data):
    with torch.no_grad():
        return program.exact_log_p(*data)


# --------------------------------------------------------------------------- registry


def test_registry_has_every_required_idiom_and_the_readme_lists_them():
    assert REQUIRED <= set(CASES)
    readme = (Path(__file__).parent / "README.md").read_text()
    for name, case in CASES.items():
        assert case.name == name
        assert case.idiom.strip().endswith(".")
        assert f"`{name}`" in readme
        if case.all_discrete:
            assert case.discrete


# --------------------------------------------------------------------------- data and build


@ALL
def test_data_is_deterministic_float64_with_n_rows(case):
    """Tensors are float64 with N rows; a non-tensor argument (a configuration) is the same object."""
    first, second = case.data(N), case.data(N)
    assert isinstance(first, tuple) and len(first) >= 1 and isinstance(first[0], torch.Tensor)
    for a, b in zip(first, second, strict=True):
        if not isinstance(a, torch.Tensor):
            assert a == b
            continue
        assert a.dtype == torch.float64 and a.shape[0] == N
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
    assert all(t.shape[0] == 5 for t in case.data(5) if isinstance(t, torch.Tensor))


@ALL
def test_build_gives_independent_programs_listing_every_module(case):
    one, two = case.build(), case.build()
    ids_one = {id(p) for m in one.modules for p in m.parameters()}
    ids_two = {id(p) for m in two.modules for p in m.parameters()}
    assert not ids_one & ids_two
    assert not {id(m) for m in one.modules} & {id(m) for m in two.modules}
    with torch.no_grad():
        for m in one.modules:
            for p in m.parameters():
                p.add_(1.0)
    assert all(
        not torch.equal(p, q)
        for m1, m2 in zip(one.modules, two.modules, strict=True)
        for p, q in zip(m1.parameters(), m2.parameters(), strict=True)
    )
    # every tensor in the parameter store after one model+guide run belongs to a listed module
    # (a bare-pyro.param program has no modules and only store parameters)
    pyro.clear_param_store()
    program, data = case.build(), case.data(N)
    _traces(case, program, data)
    module_params = {id(p) for m in program.modules for p in m.parameters()}
    store = dict(pyro.get_param_store().named_parameters())
    assert store
    if program.modules:
        assert {id(v) for v in store.values()} == module_params
    else:
        assert all("$$$" not in name for name in store)
    for p in (p for m in program.modules for p in m.parameters()):
        assert p.dtype == torch.float64


# --------------------------------------------------------------------------- flags against traces


@ALL
def test_every_site_is_in_the_data_plate_and_the_flags_match_the_traces(case):
    program, data = case.build(), case.data(N)
    model_trace, guide_trace = _traces(case, program, data)
    for trace in (model_trace, guide_trace):
        for site in _sample_sites(trace):
            frame = _data_frame(site)
            assert site["fn"].batch_shape[frame.dim] == N, site["name"]

    latents = [s for s in _sample_sites(guide_trace) if not s["is_observed"]]
    is_discrete = [not s["fn"].has_rsample for s in latents]
    assert case.discrete == any(is_discrete)
    assert case.all_discrete == (all(is_discrete) and all(s["fn"].has_enumerate_support for s in latents))

    modes = [
        isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.Dropout))
        for m in program.modules
        for sub in m.modules()
    ]
    assert case.train_mode_modules == any(modes)

    observed_in_guide = [s for s in _sample_sites(guide_trace) if s["is_observed"]]
    assert (program.extra_guide_terms is not None) == bool(observed_in_guide)
    if observed_in_guide:
        guide_trace.compute_log_prob()
        total = sum(_per_datapoint(s["unscaled_log_prob"], _data_frame(s).dim, 1) for s in observed_in_guide)
        torch.testing.assert_close(total, program.extra_guide_terms(*data).detach())


@ALL
def test_broadcasts_flag_matches_pyro_vectorized_particles(case):
    program, data = case.build(), case.data(N)
    elbo = _elbo(case, _max_plate_nesting(case, program, data), num_particles=3, vectorize_particles=True)
    if case.broadcasts:
        assert math.isfinite(elbo.loss(program.model, program.guide, *data, **case.kwargs))
    else:
        with pytest.raises(RuntimeError, match="same number of dimensions"):
            elbo.loss(program.model, program.guide, *data, **case.kwargs)


@ALL
def test_has_num_data_flag_matches_the_plate_scale(case):
    program, data = case.build(), case.data(N)
    accepts = ["num_data" in inspect.signature(fn).parameters for fn in (program.model, program.guide)]
    if case.has_num_data:
        assert all(accepts)
    if not all(accepts):
        assert not case.has_num_data
        return
    model_trace, guide_trace = _traces(case, program, data, num_data=4 * N)
    scales = {s["scale"] for trace in (model_trace, guide_trace) for s in _sample_sites(trace)}
    assert scales == ({4.0} if case.has_num_data else {1.0})
    frame_sizes = {_data_frame(s).size for s in _sample_sites(model_trace)}
    assert frame_sizes == {N}


# --------------------------------------------------------------------------- training


@ALL
def test_pyro_svi_trains_every_parameter(case):
    program, data = case.build(), case.data(N)
    if program.exact_log_p is not None:
        _exact(program, data)  # registers bare pyro.params with their initial values
    before = _snapshot(program)
    svi = SVI(
        program.model, program.guide, Adam({"lr": 1e-2}), _elbo(case, _max_plate_nesting(case, program, data))
    )
    losses = [svi.step(*data, **case.kwargs) for _ in range(30)]
    assert all(math.isfinite(loss) for loss in losses)
    after = _snapshot(program)
    assert before.keys() <= after.keys()
    unchanged = [name for name, value in before.items() if torch.equal(value, after[name])]
    assert not unchanged
    if program.exact_log_p is not None:
        assert torch.isfinite(_exact(program, data)).all()


# --------------------------------------------------------------------------- the bound


@ALL
def test_pyro_elbo_is_strictly_below_exact_log_p(case):
    program, data = case.build(), case.data(N)
    if program.exact_log_p is None:
        pytest.skip("no closed-form log p(x)")
    if case.name == "poutine_scale":
        pytest.skip(
            "Pyro's Trace_ELBO scales the likelihood term by 0.5 too, so it bounds the tempered "
            "integral of p(z) p(x|z)^0.5, not log p(x) (see test_pyro_elbo_counts_the_likelihood_scale)"
        )
    exact = _exact(program, data).sum().item()
    elbo = _elbo(case, _max_plate_nesting(case, program, data))
    # guide factors are in Pyro's -loss with a minus sign: add them back to get the model's ELBO
    shift = program.extra_guide_terms(*data).sum().item() if program.extra_guide_terms else 0.0
    draws = 1 if case.all_discrete else 200  # TraceEnum_ELBO over an all-discrete guide is exact
    values = torch.tensor(
        [-elbo.loss(program.model, program.guide, *data, **case.kwargs) + shift for _ in range(draws)]
    )
    mean = values.mean().item()
    se = values.std().item() / math.sqrt(draws) if draws > 1 else 1e-9 * abs(exact)
    assert mean <= exact + 4 * se
    assert mean + 4 * se < exact  # the initial guides are reasonable but not exact


def test_pyro_elbo_counts_the_likelihood_scale():
    """For poutine_scale, Pyro's Trace_ELBO is E[log p(z) + 0.5 log p(x|z) - log q(z)], which
    here lies ABOVE the unscaled log p(x): it is no bound of the evidence."""
    case = CASES["poutine_scale"]
    program, data = case.build(), case.data(N)
    values = torch.tensor([-Trace_ELBO().loss(program.model, program.guide, *data) for _ in range(200)])
    se = values.std().item() / math.sqrt(len(values))
    assert values.mean().item() - 4 * se > _exact(program, data).sum().item()


def test_guide_factor_shifts_pyro_elbo_by_exactly_the_extra_guide_terms():
    case = CASES["guide_factor"]
    program, data = case.build(), case.data(N)
    (name,) = [s["name"] for s in _sample_sites(_traces(case, program, data)[1]) if s["is_observed"]]
    hidden = poutine.block(program.guide, hide=[name])
    losses = []
    for guide in (program.guide, hidden):
        pyro.set_rng_seed(7)  # the same z draws for both
        losses.append(Trace_ELBO().loss(program.model, guide, *data))
    shift = program.extra_guide_terms(*data).sum().item()
    assert losses[0] - losses[1] == pytest.approx(shift, rel=1e-10)


def test_sequential_and_parallel_enumeration_give_the_same_exact_elbo():
    losses = []
    for name in ("enumerated_parallel", "enumerated_sequential"):
        case = CASES[name]
        program, data = case.build(), case.data(N)
        losses.append(TraceEnum_ELBO(max_plate_nesting=1).loss(program.model, program.guide, *data))
        pyro.clear_param_store()
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)


# --------------------------------------------------------------------------- exact_log_p itself


@ALL
def test_exact_log_p_matches_prior_monte_carlo_through_the_model(case):
    """p(x_n) = E_{prior}[exp(sum of the observed sites' unscaled log-probs)]: draw S latents from
    the program's own model under a particle plate and compare within 4 standard errors."""
    program, data = case.build(), case.data(N)
    if program.exact_log_p is None:
        pytest.skip("no closed-form log p(x)")
    nesting = _max_plate_nesting(case, program, data) + 1
    draws = 50000

    def vectorized(*args, **kwargs):
        with pyro.plate("prior_draws", draws, dim=-nesting):
            return program.model(*args, **kwargs)

    with torch.no_grad():
        trace = poutine.trace(vectorized).get_trace(*data, **case.kwargs)
        trace.compute_log_prob()
        observed = [s for s in _sample_sites(trace) if s["is_observed"]]
        assert observed
        log_lik = sum(
            _per_datapoint(s["unscaled_log_prob"], _data_frame(s).dim, nesting)
            .reshape(-1, N)
            .expand(draws, N)
            for s in observed
        )
        ratio = torch.exp(log_lik - _exact(program, data))  # (draws, n), mean 1 if exact_log_p is right
    mean, se = ratio.mean(0), ratio.std(0) / math.sqrt(draws)
    assert (se < 0.05).all(), "too few draws to see a 0.2-nat error"
    assert ((mean - 1).abs() < 4 * se).all(), (mean, se)


GRID_CASES = {"no_broadcast": 3, "discrete_then_continuous": 3, "nested_plates": None}


@pytest.mark.parametrize("name", list(GRID_CASES))
def test_exact_log_p_matches_grid_integration_over_the_scalar_latent(name):
    """For the programs with a one-dimensional continuous z (and perhaps a one-hot y), condition
    the model on a fine grid of z values (and on every y), integrate exp(log joint) over z with
    torch.trapezoid and sum over y."""
    case = CASES[name]
    program, data = case.build(), case.data(N)
    (x,) = data
    num_classes = GRID_CASES[name]
    nesting = _max_plate_nesting(case, program, data) + 1
    grid = torch.linspace(-9.0, 9.0, 4001, dtype=x.dtype)
    z = grid.reshape(-1, 1, 1).expand(-1, N, 1)
    ys = [None] if num_classes is None else list(torch.eye(num_classes, dtype=x.dtype))
    per_y = []
    with torch.no_grad():
        for y in ys:
            values = {"z": z} if y is None else {"z": z, "y": y.expand(len(grid), N, num_classes)}

            def on_grid(*args, values=values):
                with pyro.plate("grid", len(grid), dim=-nesting):
                    return poutine.condition(program.model, data=values)(*args)

            trace = poutine.trace(on_grid).get_trace(*data)
            trace.compute_log_prob()
            log_joint = sum(
                _per_datapoint(s["unscaled_log_prob"], _data_frame(s).dim, nesting).reshape(-1, N)
                for s in _sample_sites(trace)
            )
            peak = log_joint.max(0).values
            per_y.append(torch.trapezoid(torch.exp(log_joint - peak), grid, dim=0).log() + peak)
    brute_force = torch.stack(per_y).logsumexp(0)
    torch.testing.assert_close(_exact(program, data), brute_force, rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------------------- Pyro behaviours worth knowing


def test_a_has_rsample_false_guide_factor_does_not_get_its_own_gradient():
    """scANVI's guide factor is declared has_rsample=False, so Pyro treats it as a score-function
    term: Trace_ELBO multiplies its gradient by the (detached) log importance ratio and
    TraceGraph_ELBO gives it no gradient at all; neither is the gradient of the loss value."""
    case = CASES["guide_factor"]
    program, data = case.build(), case.data(N)
    classifier = list(program.modules[0].classifier.parameters())
    factor = program.extra_guide_terms(*data).sum()
    direct = torch.cat([g.flatten() for g in torch.autograd.grad(factor, classifier)])
    grads = {}
    for elbo in (Trace_ELBO(), TraceGraph_ELBO()):
        for p in classifier:
            p.grad = None
        elbo.loss_and_grads(program.model, program.guide, *data)
        grads[type(elbo).__name__] = torch.cat(
            [(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in classifier]
        )
    assert (grads["Trace_ELBO"] - direct).norm() > direct.norm()
    assert grads["TraceGraph_ELBO"].abs().max() == 0


def test_a_stale_param_store_silently_stops_a_second_build_from_training():
    """pyro.module returns the STORED parameters of a name already in the store but leaves the new
    module's own parameters in place, so SVI optimizes the stale tensors and the new module never
    changes: every run of a freshly built program must start from pyro.clear_param_store()."""
    case = CASES["whole_module"]
    (x,) = case.data(N)
    case.build().guide(x)  # a first program fills the store under "ss_vae"
    program = case.build()
    before = [p.detach().clone() for p in program.modules[0].parameters()]
    svi = SVI(program.model, program.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step(x)
    assert all(torch.equal(p, q) for p, q in zip(before, program.modules[0].parameters(), strict=True))
