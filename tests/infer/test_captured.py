"""CapturedLoss: the replayed graph gives the eager step's draws, values and gradients."""

import pyro
import pytest
import torch

from pyro_vae.errors import CaptureFallbackWarning, InputError
from pyro_vae.estimators import VIMCO
from pyro_vae.infer import MeanFieldELBO, graph_capture
from pyro_vae.infer.captured import CapturedLoss
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE
from pyro_vae.train import fit, train_step


def _x(n=16, d=6, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def _train(loss, batches, *, seed=0, name="v"):
    """Steps of ``loss`` on ``batches`` from the same initial parameters and random state:
    (losses, final parameters)."""
    torch.manual_seed(seed)
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,), name=name)
    pyro.clear_param_store()
    loss.loss(vae.model, vae.guide, batches[0], num_data=64)  # registers the parameters
    opt = torch.optim.Adam(vae.parameters(), lr=0.05)
    torch.manual_seed(seed + 1)
    values = [train_step(loss, opt, vae.model, vae.guide, (x,), {"num_data": 64}) for x in batches]
    return values, [p.detach().clone() for p in vae.parameters()]


@pytest.mark.parametrize("num_particles", [1, 3])
def test_replay_is_bitwise_the_eager_step(num_particles):
    batches = [_x(seed=s) for s in range(5)]
    eager = _train(MeanFieldELBO(num_particles=num_particles), batches)
    captured_loss = CapturedLoss(MeanFieldELBO(num_particles=num_particles))
    captured = _train(captured_loss, batches)
    assert captured_loss.captured_steps == 4, captured_loss.fallback_reason  # the first step is eager
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


def test_a_new_structure_is_eager_first_and_max_graphs_bounds_the_graphs():
    """A batch-size change is a new structure: run eagerly, then captured; past max_graphs, eager;
    every step equal to the eager run."""
    batches = [_x(16, seed=0), _x(16, seed=1), _x(8, seed=2), _x(8, seed=3), _x(4, seed=4), _x(4, seed=5)]
    eager = _train(MeanFieldELBO(), batches)
    captured_loss = CapturedLoss(MeanFieldELBO(), max_graphs=2)
    captured = _train(captured_loss, batches)
    assert len(captured_loss._graphs) == 2
    assert captured_loss.captured_steps == 2  # the second 16-row and the second 8-row step
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


def test_enclosing_handlers_and_unhashable_arguments_stay_eager():
    loss = CapturedLoss(MeanFieldELBO())
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
    x = _x()
    with pyro.poutine.trace():
        assert loss.structure(vae.model, vae.guide, (x,), {}) is None
    assert loss.structure(vae.model, vae.guide, (x,), {"num_data": [64]}) is None
    assert loss.structure(vae.model, vae.guide, (x,), {"num_data": 64}) is not None
    # a module's mode is part of the structure (dropout, BatchNorm take other operations)
    key = loss.structure(vae.model, vae.guide, (x,), {})
    vae.eval()
    assert loss.structure(vae.model, vae.guide, (x,), {}) != key


def test_stateful_and_foreign_losses_are_refused():
    with pytest.raises(InputError, match="ParticleLoss"):
        CapturedLoss(pyro.infer.Trace_ELBO())
    vimco = VIMCO(num_particles=2)
    if type(vimco).state_dict is not MeanFieldELBO.state_dict:
        with pytest.raises(InputError, match="state of its own"):
            CapturedLoss(vimco)


def test_fit_with_captured_loss_trains_the_same_parameters():
    x = _x(32)
    states = []
    for loss in (MeanFieldELBO(), CapturedLoss(MeanFieldELBO())):
        torch.manual_seed(0)
        vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))
        fit(vae.model, vae.guide, x, epochs=2, batch_size=8, loss=loss, progress=False)
        states.append([p.detach().clone() for p in vae.parameters()])
    assert loss.captured_steps > 0, loss.fallback_reason
    for a, b in zip(*states, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_compiled_graph_equals_eager_to_float_rounding():
    batches = [_x(seed=s) for s in range(4)]
    eager = _train(MeanFieldELBO(num_particles=2), batches)
    captured_loss = CapturedLoss(MeanFieldELBO(num_particles=2), compile=True)
    captured = _train(captured_loss, batches)
    assert captured_loss.captured_steps == 3, captured_loss.fallback_reason
    assert captured_loss.compiled and captured_loss.compile_note == ""
    torch.testing.assert_close(torch.tensor(eager[0]), torch.tensor(captured[0]), rtol=1e-5, atol=1e-4)
    for a, b in zip(eager[1], captured[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _off_by_a_percent(module, inputs):
    """A stand-in for Inductor (``compile_graph``) whose "compiled" graph is 1% off (a wrong kernel)."""

    def run(*args):
        objective, *rest = module(*args)  # the outputs, then (a joint graph) the gradients
        return objective * 1.01, *rest

    return run


def _failing(module, inputs):
    raise RuntimeError("Inductor cannot compile this")


@pytest.mark.parametrize(
    ("compiler", "why"), [(_off_by_a_percent, "disagreed"), (_failing, "cannot compile")]
)
def test_a_compiled_graph_that_fails_or_disagrees_leaves_the_checked_graph(monkeypatch, compiler, why):
    """The compile is a second stage: the graph checked bitwise against the eager run is kept,
    and replayed bitwise, when the compiled one cannot be made or is off beyond rounding."""
    batches = [_x(seed=s) for s in range(4)]
    eager = _train(MeanFieldELBO(), batches)
    monkeypatch.setattr(graph_capture, "compile_graph", compiler)
    captured_loss = CapturedLoss(MeanFieldELBO(), compile=True)
    captured = _train(captured_loss, batches)
    assert captured_loss.captured_steps == 3 and not captured_loss.compiled
    assert why in captured_loss.compile_note
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_compiled_graph_is_captured_when_gradients_cancel_at_scale():
    """At num_data / batch_size ~ 1000 on a 64-32-4 VAE some gradient entries are near-
    cancellations of large terms, which Inductor's reordered sums round differently from the
    eager kernels by far more than the entries' own size times the precision (an entrywise
    check refused the graph): the compiled step is checked to the rounding of each gradient's
    scale, captured, and trains as the eager step does to float rounding."""
    x = (torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    results = []
    for loss in (MeanFieldELBO(), CapturedLoss(MeanFieldELBO(), compile=True, capture_after=1)):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE(Bernoulli(64), latent_dim=4, hidden=(32,), name="wide")
        opt = torch.optim.Adam(vae.parameters(), lr=0.01)
        torch.manual_seed(1)
        values = [train_step(loss, opt, vae.model, vae.guide, (x,), {"num_data": 60_000}) for _ in range(4)]
        results.append((values, [p.detach().clone() for p in vae.parameters()]))
    assert loss.captured_steps == 3, loss.fallback_reason
    (eager_values, eager_params), (values, params) = results
    torch.testing.assert_close(torch.tensor(values), torch.tensor(eager_values), rtol=1e-5, atol=1e-2)
    for a, b in zip(params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_control_flow_on_values_stays_eager():
    """A program reading a tensor's value cannot be captured: it runs eagerly, the reason kept."""
    torch.manual_seed(0)
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,))

    def model(x, num_data=None):
        if float(x.sum()) >= 0:  # reads a value
            vae.model(x, num_data=num_data)

    loss = CapturedLoss(MeanFieldELBO())
    x = _x()
    for _ in range(3):
        loss.loss_and_grads(model, vae.guide, x, num_data=64)
    assert loss.captured_steps == 0
    assert "capture failed" in loss.fallback_reason


def test_a_replay_that_raises_falls_back_to_the_eager_step():
    batches = [_x(seed=s) for s in range(6)]
    eager = _train(MeanFieldELBO(), batches)
    captured_loss = CapturedLoss(MeanFieldELBO())
    original = CapturedLoss._capture

    def failing_after_two(self, *a):
        captured = original(self, *a)
        run, calls = captured.run, []

        def run_or_fail(*tensors):
            calls.append(1)
            if len(calls) > 2:
                raise RuntimeError("shape mismatch")
            return run(*tensors)

        captured.run = run_or_fail
        return captured

    CapturedLoss._capture = failing_after_two
    try:
        with pytest.warns(CaptureFallbackWarning, match="a replay failed: RuntimeError: shape mismatch"):
            captured = _train(captured_loss, batches)
    finally:
        CapturedLoss._capture = original
    # steps 2 and 3 replayed (both checked: bitwise the eager draws); step 4's replay raises
    # before drawing anything, so its eager step and the rest are the eager run's
    assert captured_loss.captured_steps == 2
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


def test_a_graph_is_used_while_its_parameters_are_in_the_store():
    """Another model's parameters coming into the store keep the graph; replacing one of the
    program's parameter tensors makes a new one (eager, then captured again)."""
    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,), name="mine")
    loss = CapturedLoss(MeanFieldELBO())
    x = _x()
    for _ in range(3):
        loss.loss_and_grads(vae.model, vae.guide, x)
    assert loss.captured_steps == 2
    other = VAE(Bernoulli(6), latent_dim=2, hidden=(5,), name="other")
    MeanFieldELBO().loss(other.model, other.guide, x)  # registers other's parameters
    loss.loss_and_grads(vae.model, vae.guide, x)
    assert loss.captured_steps == 3
    store = pyro.get_param_store()
    name = next(n for n in store.keys() if n.startswith("mine"))
    store._params[name] = store._params[name].detach().clone().requires_grad_()
    loss.loss_and_grads(vae.model, vae.guide, x)
    assert loss.captured_steps == 3  # eager
    loss.loss_and_grads(vae.model, vae.guide, x)
    assert loss.captured_steps == 4  # captured anew
    pyro.clear_param_store()


@pytest.mark.parametrize("estimator", ["score", "vimco", "relaxed", "relaxed-schedule"])
def test_discrete_estimators_steps_are_captured_bitwise(estimator):
    """Categorical sites (one-hot draws by the distribution's sampler or by Gumbel-max) trace:
    the replayed score-function, VIMCO and Gumbel-softmax steps are bitwise the eager ones,
    a temperature schedule's state kept by the loss."""
    from pyro_vae.estimators import RelaxedELBO, ScoreFunctionELBO, TemperatureSchedule
    from pyro_vae.models import CategoricalLatent, DiscreteVAE

    def make():
        if estimator == "relaxed":
            return RelaxedELBO(temperature=0.5)
        if estimator == "relaxed-schedule":  # 1.0 for two steps, then 0.5: two structures, 1 + 2 replays
            return RelaxedELBO(temperature=TemperatureSchedule(initial=1.0, minimum=0.5, rate=1.0, every=2))
        return ScoreFunctionELBO() if estimator == "score" else VIMCO(num_particles=3)

    batches = [_x(seed=s) for s in range(5)]
    results = []
    for loss in (make(), CapturedLoss(make())):
        torch.manual_seed(0)
        pyro.clear_param_store()
        vae = DiscreteVAE(Bernoulli(6), CategoricalLatent(2, 3), hidden=(5,), name="d")
        loss.loss(vae.model, vae.guide, batches[0], num_data=64)
        opt = torch.optim.Adam(vae.parameters(), lr=0.05)
        torch.manual_seed(1)
        with pyro.validation_enabled(False):  # as in fit's loop (validation orders some operations otherwise)
            values = [train_step(loss, opt, vae.model, vae.guide, (x,), {"num_data": 64}) for x in batches]
        results.append((values, [p.detach().clone() for p in vae.parameters()]))
    # the first step of each structure is eager (a schedule's new temperature is a new one)
    assert loss.captured_steps == (3 if estimator == "relaxed-schedule" else 4), loss.fallback_reason
    assert results[0][0] == results[1][0]
    if estimator.startswith("relaxed"):  # the step counter advanced on replays too
        assert loss.state_dict() == {"step": 5}
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


def test_a_fold_that_changes_a_gradient_falls_back_to_the_graph_as_traced(monkeypatch):
    """Dropping an identity can reorder a gradient's sum; then the capture check rejects the
    folded graph and the graph as traced (fold=False) is replayed, bitwise the eager step."""
    import pyro_vae.infer.graph_capture as capture_module
    from pyro_vae.infer.graph_simplify import simplify_graph

    calls = []

    def perturbed(graph, *, fold=True):
        calls.append(fold)
        simplified = simplify_graph(graph, fold=fold)
        if fold:  # a folded graph whose gradients differ in the last bit
            out = next(n for n in simplified.module.graph.nodes if n.op == "output")
            surrogate = out.args[0][1]
            with simplified.module.graph.inserting_before(out):
                nudged = simplified.module.graph.call_function(
                    torch.ops.aten.mul.Tensor, (surrogate, 1.0000001)
                )
            out.args = ((out.args[0][0], nudged),)
            simplified.module.recompile()
        return simplified

    monkeypatch.setattr(capture_module, "simplify_graph", perturbed)
    batches = [_x(seed=s) for s in range(4)]
    eager = _train(MeanFieldELBO(), batches)
    captured_loss = CapturedLoss(MeanFieldELBO())
    captured = _train(captured_loss, batches)
    assert calls == [True, False]
    assert captured_loss.captured_steps == 3, captured_loss.fallback_reason
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


def test_a_graph_relying_on_a_prior_buffer_is_captured_anew_once_the_buffer_changes():
    """The standard-normal prior's (z - 0) / 1 is folded away; changing its scale in place
    makes the graph stale: the step runs eagerly, then a new graph, bitwise the eager run."""
    batches = [_x(seed=s) for s in range(6)]

    def run(loss):
        torch.manual_seed(0)
        vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,), name="p")
        pyro.clear_param_store()
        loss.loss(vae.model, vae.guide, batches[0], num_data=64)
        opt = torch.optim.Adam(vae.parameters(), lr=0.05)
        torch.manual_seed(1)
        values = []
        for i, x in enumerate(batches):
            if i == 3:
                with torch.no_grad():
                    vae.prior.scale.fill_(2.0)
            values.append(train_step(loss, opt, vae.model, vae.guide, (x,), {"num_data": 64}))
        return values, [p.detach().clone() for p in vae.parameters()]

    eager = run(MeanFieldELBO())
    captured_loss = CapturedLoss(MeanFieldELBO())
    captured = run(captured_loss)
    # steps 2 and 3 replayed; step 4 eager (the graph is stale); 5 and 6 from a new graph
    assert captured_loss.captured_steps == 4, captured_loss.fallback_reason
    graph = next(g for g in captured_loss._graphs.values() if g is not None)
    assert graph.simplified.folds > 0
    assert eager[0] == captured[0]
    for a, b in zip(eager[1], captured[1], strict=True):
        assert torch.equal(a, b)


def _big_and_small():
    """Batches of two structures: eight of 16 rows and two of 8."""
    return [_x(seed=s) for s in range(8)], [_x(n=8, seed=10 + s) for s in range(2)]


def _trained_on_two_structures(monkeypatch, *, compile_after):
    """The eager steps and those of ``CapturedLoss(compile=True, capture_after=1,
    compile_after=...)`` on the big batches (every step but two) and the small ones
    (steps 5 and 10), a compiler taken as found: (eager, captured, the loss)."""
    from pyro_vae.infer import captured as module

    monkeypatch.setattr(module, "check_compile", lambda compile: None)
    big, small = _big_and_small()
    batches = big[:4] + small[:1] + big[4:] + small[1:]
    loss = CapturedLoss(MeanFieldELBO(), compile=True, capture_after=1, compile_after=compile_after)
    return _train(MeanFieldELBO(), batches), _train(loss, batches), loss


def test_compile_after_compiles_only_the_structures_that_run_that_often(monkeypatch):
    """``compile_after=5``: the graph of a structure run every step is replayed uncompiled
    from its 2nd run and compiled (captured anew) at its 6th; one run twice is never
    compiled. A stand-in compiler that returns the graph itself keeps every step bitwise the
    eager one. The run counts go into ``capture_state``, so a loss continuing from it
    compiles a structure past ``compile_after`` at its first capture."""
    compiled = []

    def identity(module, inputs):
        compiled.append(module)
        return module

    monkeypatch.setattr(graph_capture, "compile_graph", identity)
    eager, got, loss = _trained_on_two_structures(monkeypatch, compile_after=5)
    assert len(compiled) == 1 and loss.compiled and loss.compile_note == ""
    # the graph compiled is the joint one: objective and surrogate, then the gradients
    outputs = next(n for n in compiled[0].graph.nodes if n.op == "output").args[0]
    assert len(outputs) == 2 + len(list(pyro.get_param_store().values()))
    graphs = {tuple(key[4][1][1]): graph for key, graph in loss._graphs.items()}  # by batch shape
    assert graphs[(16, 6)].compiled and graphs[(16, 6)].replays == 8 - 5  # runs 6, 7, 8
    assert graphs[(8, 6)].compiled is False and graphs[(8, 6)].replays == 1
    assert loss.captured_steps == 7 + 1
    assert eager[0] == got[0]
    for a, b in zip(eager[1], got[1], strict=True):
        assert torch.equal(a, b)
    assert sorted(loss.capture_state().values()) == [2, 8]

    resumed = CapturedLoss(MeanFieldELBO(), compile=True, capture_after=1, compile_after=5)
    resumed.load_capture_state(loss.capture_state())
    big, small = _big_and_small()
    _train(resumed, big[:1] + small[:1])
    assert len(compiled) == 2  # the big batches' structure, compiled at once; the small not
    assert resumed.captured_steps == 2 and resumed.compiled


def test_compile_after_is_checked():
    with pytest.raises(InputError, match="compile_after"):
        CapturedLoss(MeanFieldELBO(), compile_after=0)


def test_a_compile_that_fails_when_due_is_tried_once_and_the_checked_graph_replays(monkeypatch):
    tried = []

    def failing(module, inputs):
        tried.append(module)
        raise RuntimeError("Inductor cannot compile this")

    monkeypatch.setattr(graph_capture, "compile_graph", failing)
    eager, got, loss = _trained_on_two_structures(monkeypatch, compile_after=2)
    assert len(tried) == 1 and not loss.compiled and "cannot compile" in loss.compile_note
    assert loss.captured_steps == 7 + 1
    assert eager[0] == got[0]


def test_a_recapture_refused_when_compiling_is_due_leaves_the_structure_eager(monkeypatch):
    """A structure whose capture for compiling is refused (its check against the eager run
    failed) runs eagerly from then on, as one refused at its first capture does."""
    from pyro_vae.infer import captured as module

    refusal = "the captured graph's value differs from the eager one: stand-in"
    plain = module.capture_graph

    def refusing(*args, compile, **options):
        return refusal if compile else plain(*args, compile=compile, **options)

    monkeypatch.setattr(module, "capture_graph", refusing)
    eager, got, loss = _trained_on_two_structures(monkeypatch, compile_after=4)
    # the big batches: eager once, replayed at runs 2-4, refused at 5 and eager after
    assert loss.captured_steps == 3 + 1 and loss.fallback_reason == refusal
    assert sorted(loss.capture_state().values()) == [-1, 2]
    assert eager[0] == got[0]
    for a, b in zip(eager[1], got[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")  # pyro.module, frozen
def test_a_parameter_frozen_or_unfrozen_after_a_compile_is_trained_as_eagerly(monkeypatch):
    """A graph compiled with its gradients has one for each parameter that required one at
    capture: freezing a parameter (or unfreezing it) makes the graph stale, so the step runs
    eagerly, as autograd would, and the structure is captured anew."""
    from pyro_vae.infer import captured as module

    monkeypatch.setattr(module, "check_compile", lambda compile: None)
    monkeypatch.setattr(graph_capture, "compile_graph", lambda graph, inputs: graph)
    torch.manual_seed(0)
    pyro.clear_param_store()
    vae = VAE(Bernoulli(6), latent_dim=2, hidden=(5,), name="frozen")
    loss = CapturedLoss(MeanFieldELBO(), compile=True, capture_after=1)
    x = _x()
    params = dict(pyro.get_param_store().named_parameters())
    for _ in range(3):
        loss.loss_and_grads(vae.model, vae.guide, x, num_data=64)
        params = dict(pyro.get_param_store().named_parameters())
        for p in params.values():
            p.grad = None
    assert loss.compiled and loss.captured_steps == 2
    name, frozen = next(iter(params.items()))
    frozen.requires_grad_(False)
    for step in range(3):  # eager, then captured anew, then replayed
        loss.loss_and_grads(vae.model, vae.guide, x, num_data=64)
        assert frozen.grad is None, (name, step)
        assert all(p.grad is not None for n, p in params.items() if n != name)
        for p in params.values():
            p.grad = None
    frozen.requires_grad_(True)
    loss.loss_and_grads(vae.model, vae.guide, x, num_data=64)
    assert frozen.grad is not None


def test_backward_with_is_the_backward_of_that_gradient_bitwise():
    from pyro_vae.infer.captured import backward_with

    def leaves():
        g = torch.Generator().manual_seed(0)
        return torch.randn(5, 3, generator=g).requires_grad_(), torch.randn(3, generator=g).requires_grad_()

    (a, b), (c, d) = leaves(), leaves()
    gradient = torch.full((), -1.0)
    ((a @ b).sin().sum()).backward(gradient)
    backward_with((c @ d).sin().sum(), gradient)
    assert torch.equal(a.grad, c.grad) and torch.equal(b.grad, d.grad)
    backward_with((c @ d).sin().sum(), gradient)  # accumulated, as backward() accumulates
    assert torch.equal(c.grad, 2 * a.grad)
    with pytest.raises(RuntimeError, match="Mismatch in shape"):  # as backward() refuses it
        backward_with((c @ d).sin().sum(), torch.ones(4))

    class Seen(torch.overrides.TorchFunctionMode):  # a mode sees the call, as it sees backward()
        calls: list = []  # noqa: RUF012

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls.append(func)
            return func(*args, **(kwargs or {}))

    with Seen():
        backward_with((c @ d).sin().sum(), gradient)
    assert torch.Tensor.backward in Seen.calls
