"""CapturedLogWeights: an evaluation's chunks replayed from captured graphs give the eager
chunks' log-weights, bitwise, or run eagerly and say why."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.bounds import elbo, iwae, log_marginal
from pyro_vae.errors import CaptureFallbackWarning, InputError
from pyro_vae.infer.captured_log_weights import CapturedLogWeights
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import VAE


def _x(n=12, d=6, seed=0):
    return (torch.rand(n, d, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def _vae(seed=0):
    torch.manual_seed(seed)
    return VAE(Bernoulli(6), latent_dim=2, hidden=(5,))


def _pair(bound, model, guide, x, capture, *, seed=1, **options):
    """``bound`` eager and with ``capture``, from the same random state, validation off."""
    with pyro.validation_enabled(False):
        torch.manual_seed(seed)
        eager = bound(model, guide, x, capture=False, **options)
        torch.manual_seed(seed)
        captured = bound(model, guide, x, capture=capture, **options)
    return eager, captured


def _recording(monkeypatch) -> list:
    """The CapturedLogWeights made from now on in this test (the bounds' defaults make one)."""
    made = []
    init = CapturedLogWeights.__init__

    def recording(self, **options):
        init(self, **options)
        made.append(self)

    monkeypatch.setattr(CapturedLogWeights, "__init__", recording)
    return made


@pytest.mark.parametrize("bound", [iwae, elbo], ids=["iwae", "elbo"])
def test_captured_chunks_are_bitwise_the_eager_chunks(bound):
    vae, x = _vae(), _x()
    capture = CapturedLogWeights()
    options = {"num_particles": 8, "max_rows": 8, "return_error": True}  # 12 chunks of 1 point x 8
    eager, captured = _pair(bound, vae.model, vae.guide, x, capture, **options)
    assert capture.captured_chunks > 0, capture.fallback_reason
    assert torch.equal(eager.value, captured.value)
    assert torch.equal(eager.standard_error, captured.standard_error)
    assert eager.mode == captured.mode == "vectorized"


def test_graphs_are_kept_across_calls_and_shared_by_bounds_of_the_same_chunks():
    """A kept capture replays every chunk once its structures are known (each call's first
    chunk, which settles the plan of that call's probe, is a structure of its own, captured
    in the second call); iwae and elbo with the same particles run the same chunks (the
    same log-weights), so they share graphs."""
    vae, x = _vae(), _x()
    capture = CapturedLogWeights()
    _pair(iwae, vae.model, vae.guide, x, capture, num_particles=8, max_rows=8)
    assert capture.graphs == 1 and capture.captured_chunks == 10  # chunks 0 (plan) and 1 eager
    eager, captured = _pair(elbo, vae.model, vae.guide, x, capture, num_particles=8, max_rows=8)
    assert capture.graphs == 2
    assert capture.captured_chunks == 10 + 12  # every chunk
    assert torch.equal(eager, captured)


def test_particle_chunks_and_a_last_shorter_chunk_are_structures_of_their_own():
    """10 points in chunks of 4 (4, 4, 2) and 7 particles in chunks of 3 (3, 3, 1): each shape
    is a structure, eager first, and every value is the eager one."""
    vae, x = _vae(), _x(10)
    capture = CapturedLogWeights(max_graphs=8)
    for _ in range(2):
        eager, captured = _pair(
            log_marginal, vae.model, vae.guide, x, capture, num_particles=7, data_chunk=4, particle_chunk=3
        )
        assert torch.equal(eager.value, captured.value)
    assert capture.captured_chunks > 0 and capture.graphs >= 3, capture.fallback_reason


def _program(logits):
    """A small VAE written as Pyro's examples write one; ``logits(decoded, x)`` makes its
    likelihood's logits from the decoder's output (where a test puts the Python a graph
    cannot follow)."""
    torch.manual_seed(0)
    encoder, decoder = torch.nn.Linear(6, 4), torch.nn.Linear(2, 6)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=logits(decoder(z), x)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            h = encoder(x)
            pyro.sample("z", dist.Normal(h[:, :2], h[:, 2:].exp()).to_event(1))

    return model, guide


def test_python_state_changed_between_calls_is_caught_by_the_checked_first_replay():
    """A kept capture checks each graph's first replay in every call against an eager run: a
    program whose Python reads a global changed between calls disagrees, the replay is
    undone and the structure runs eagerly from then on, with a warning; every value is the
    eager program's."""
    shift = {"value": 0.0}
    model, guide = _program(lambda decoded, x: decoded + shift["value"])  # Python state the graph cannot see
    x = _x(16)
    capture = CapturedLogWeights()
    for _ in range(2):
        eager, captured = _pair(iwae, model, guide, x, capture, num_particles=4, max_rows=4)
        assert torch.equal(eager, captured)
    assert capture.graphs == 2, capture.fallback_reason
    shift["value"] = 1.0
    with pytest.warns(CaptureFallbackWarning, match="differs from the eager one"):
        eager, captured = _pair(iwae, model, guide, x, capture, num_particles=4, max_rows=4)
    assert torch.equal(eager, captured)
    assert capture.graphs == 0 and "state outside" in capture.fallback_reason


def test_value_dependent_programs_replaced_parameters_and_enclosing_handlers_run_eagerly():
    vae, x = _vae(), _x()

    def model(x):
        if float(x.sum()) >= 0:  # reads a value: cannot be traced
            vae.model(x)

    capture = CapturedLogWeights()
    eager, captured = _pair(iwae, model, vae.guide, x, capture, num_particles=4, max_rows=4)
    assert torch.equal(eager, captured)
    assert capture.captured_chunks == 0 and "capture failed" in capture.fallback_reason

    # a parameter replaced by another tensor: its graph is stale, captured anew
    capture = CapturedLogWeights()
    _pair(iwae, vae.model, vae.guide, x, capture, num_particles=4, max_rows=4)
    name = next(n for n in pyro.get_param_store().keys() if "decoder" in n)
    with torch.no_grad():
        vae.decoder[-1].weight = torch.nn.Parameter(vae.decoder[-1].weight + 1.0)
    assert pyro.get_param_store()[name] is not None
    eager, captured = _pair(iwae, vae.model, vae.guide, x, capture, num_particles=4, max_rows=4)
    assert torch.equal(eager, captured)

    # inside an enclosing Pyro handler every chunk is eager, so the handler sees the sites
    capture = CapturedLogWeights()
    with pyro.poutine.scale(scale=1.0):
        eager, captured = _pair(iwae, vae.model, vae.guide, x, capture, num_particles=4, max_rows=4)
    assert capture.captured_chunks == 0 and torch.equal(eager, captured)


@pytest.mark.parametrize("bound", [iwae, elbo], ids=["iwae", "elbo"])
def test_by_default_a_long_call_captures_a_structure_after_two_chunks_bitwise(bound, monkeypatch):
    """``capture=None``: a new capture for a call of at least AUTO_CAPTURE_CHUNKS chunks (12
    here) that replays a structure once it has run AUTO_CAPTURE_AFTER (2) times on the
    machine's kernels (``matmul="auto"``): bitwise the eager chunks where those are PyTorch's,
    to rounding where they are oneDNN's; a shorter call (AUTO_CAPTURE_CHUNKS 13) captures
    nothing."""
    from pyro_vae.infer import captured_log_weights as clw
    from pyro_vae.infer.onednn_matmul import resolve_matmul

    made = _recording(monkeypatch)
    monkeypatch.setattr(clw, "AUTO_CAPTURE_CHUNKS", 12)
    vae, x = _vae(), _x()
    options = {"num_particles": 8, "max_rows": 8, "return_error": True}  # 12 chunks of 1 point x 8
    eager, default = _pair(bound, vae.model, vae.guide, x, None, **options)
    (capture,) = made
    # the first chunk settles the plan (a structure of its own); of the other 11, 2 run eagerly
    assert capture._cache.capture_after == clw.AUTO_CAPTURE_AFTER == 2
    assert capture.captured_chunks == 11 - 2, capture.fallback_reason
    assert capture.matmul == resolve_matmul("auto")
    if capture.matmul == "aten":
        assert torch.equal(eager.value, default.value)
        assert torch.equal(eager.standard_error, default.standard_error)
    else:
        torch.testing.assert_close(default.value, eager.value, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(default.standard_error, eager.standard_error, rtol=1e-3, atol=1e-4)
    made.clear()
    monkeypatch.setattr(clw, "AUTO_CAPTURE_CHUNKS", 13)
    bound(vae.model, vae.guide, x, **options)  # 12 chunks: none captured
    assert made[0].captured_chunks == 0 and made[0].graphs == 0
    assert made[0].compile_option is None and not made[0].compile  # 12 < COMPILE_CHUNKS


def test_min_chunks_is_decided_for_every_call_and_checked():
    vae, x = _vae(), _x()
    capture = CapturedLogWeights(min_chunks=13)
    options = {"num_particles": 8, "max_rows": 8}  # 12 chunks
    iwae(vae.model, vae.guide, x, capture=capture, **options)
    assert capture.captured_chunks == 0 and capture.graphs == 0
    capture.min_chunks = 12
    eager, captured = _pair(iwae, vae.model, vae.guide, x, capture, **options)
    assert capture.captured_chunks > 0 and torch.equal(eager, captured)
    with pytest.raises(InputError, match="min_chunks"):
        CapturedLogWeights(min_chunks=0)


def test_a_long_call_compiles_by_default_only_where_it_pays_and_a_compiler_is_found(monkeypatch):
    from pyro_vae.infer import captured
    from pyro_vae.infer import captured_log_weights as clw
    from pyro_vae.infer.captured_log_weights import COMPILE_CHUNKS, compiles

    for module in (captured, clw):
        monkeypatch.setattr(module, "check_compile", lambda compile: None)  # a compiler, found
    assert compiles(COMPILE_CHUNKS) and not compiles(COMPILE_CHUNKS - 1)
    capture = CapturedLogWeights(compile=None)
    capture.begin(COMPILE_CHUNKS)
    assert capture.compile
    capture.begin(10)  # decided afresh for every call
    assert not capture.compile
    kept = CapturedLogWeights(compile=False)
    kept.begin(COMPILE_CHUNKS)
    assert not kept.compile  # an explicit choice stands

    def no_compiler(compile):
        raise InputError("no compiler")

    for module in (captured, clw):
        monkeypatch.setattr(module, "check_compile", no_compiler)
    assert not compiles(COMPILE_CHUNKS)
    with pytest.raises(InputError, match="no compiler"):
        CapturedLogWeights(compile=True)  # before any chunk runs
    with pytest.raises(InputError, match="compile must be True, False or None"):
        CapturedLogWeights(compile="yes")


@pytest.mark.slow
def test_the_default_compiles_the_graphs_of_a_long_call_equal_to_eager_to_float_rounding(monkeypatch):
    """``capture=None`` for a call of at least COMPILE_CHUNKS chunks (12 >= 6 here): the
    structure captured after AUTO_CAPTURE_AFTER (2) chunks is compiled, checked, and its
    replays give the eager values to float rounding, from the same random draws."""
    from pyro_vae.infer import captured_log_weights as clw

    if not clw.compiler_found():
        pytest.skip("no C++ compiler for TorchInductor")
    made = _recording(monkeypatch)
    monkeypatch.setattr(clw, "AUTO_CAPTURE_CHUNKS", 12)
    monkeypatch.setattr(clw, "COMPILE_CHUNKS", 6)
    vae, x = _vae(), _x()
    options = {"num_particles": 8, "max_rows": 8, "return_error": True}  # 12 chunks of 1 point x 8
    eager, default = _pair(iwae, vae.model, vae.guide, x, None, **options)
    (capture,) = made
    assert capture.compile and capture.compiled_graphs == capture.graphs == 1, capture.fallback_reason
    assert capture.captured_chunks == 11 - 2
    torch.testing.assert_close(default.value, eager.value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(default.standard_error, eager.standard_error, rtol=1e-4, atol=1e-5)


def test_capture_true_makes_one_for_the_call_and_other_values_are_refused():
    vae, x = _vae(), _x()
    eager, captured = _pair(iwae, vae.model, vae.guide, x, True, num_particles=4, max_rows=4)
    assert torch.equal(eager, captured)
    with pytest.raises(InputError, match="capture must be a bool or a CapturedLogWeights"):
        iwae(vae.model, vae.guide, x, num_particles=4, capture="yes")


@pytest.mark.slow
def test_compiled_chunks_equal_the_eager_chunks_to_float_rounding():
    vae, x = _vae(), _x()
    capture = CapturedLogWeights(compile=True)
    for _ in range(2):
        eager, captured = _pair(iwae, vae.model, vae.guide, x, capture, num_particles=8, max_rows=8)
        torch.testing.assert_close(captured, eager, rtol=1e-5, atol=1e-5)
    assert capture.captured_chunks > 0, capture.fallback_reason


def test_a_program_drawing_from_pythons_random_is_not_captured_and_keeps_its_draws():
    """A likelihood shifted by ``random.random()`` bakes one draw into a traced graph, so the
    capture check refuses it; neither the attempt nor the kept plan (no probe in later calls)
    moves Python's random stream: the values and Python's and PyTorch's random states after
    each call are the eager ones."""
    import random

    model, guide = _program(lambda decoded, x: decoded + random.random())
    x, capture = _x(16), CapturedLogWeights()
    for call in range(2):
        results = []
        for c in (None, capture):
            random.seed(call)
            torch.manual_seed(call)
            with pyro.validation_enabled(False):
                value = iwae(model, guide, x, num_particles=4, max_rows=8, capture=c)
            results.append((value, random.random(), torch.get_rng_state()))
        (a, ra, ta), (b, rb, tb) = results
        assert torch.equal(a, b) and ra == rb and torch.equal(ta, tb)
    assert capture.captured_chunks == 0 and "Python's random" in capture.fallback_reason


def test_value_dependent_shapes_are_refused_and_a_failed_replay_is_undone():
    """Boolean indexing (``nonzero``) bakes one chunk's count into the shapes after it: such
    graphs are refused (every chunk eager, the eager values). An unchecked replay that
    raises half-way puts PyTorch's random state back before the eager run, so the values and
    the final random state are the eager ones."""
    # a likelihood scaled by the share of rows whose first feature is set: a value read
    # through a boolean index, whose output's shape depends on the chunk's values
    model, guide = _program(lambda decoded, x: decoded * (x[x[:, 0] > 0.5].shape[0] / x.shape[0]))
    x = _x(16)

    capture = CapturedLogWeights()
    eager, captured = _pair(iwae, model, guide, x, capture, num_particles=4, max_rows=4)
    assert torch.equal(eager, captured)
    assert capture.captured_chunks == 0 and "depends on tensor values" in capture.fallback_reason

    vae = _vae()
    capture = CapturedLogWeights()
    _pair(iwae, vae.model, vae.guide, x, capture, num_particles=4, max_rows=4)
    graph = next(g for g in capture._cache.graphs.values() if g is not None)
    run = graph.run

    def half_way(*tensors):  # draws, then fails as a shape mismatch would
        torch.randn(100)
        raise RuntimeError("shape mismatch")

    graph.run, graph.replays = half_way, 2  # the next replay (the 3rd) is not checked
    capture._cache.graphs = {k: g for k, g in capture._cache.graphs.items() if g is graph}
    with pyro.validation_enabled(False):
        torch.manual_seed(5)
        expected = iwae(vae.model, vae.guide, x[:4], num_particles=4, max_rows=4)
        after = torch.get_rng_state()
        torch.manual_seed(5)
        graph.check = False
        with pytest.warns(CaptureFallbackWarning, match="a replay failed"):
            capture.check_next = lambda: None  # this call's first replay unchecked
            got = iwae(vae.model, vae.guide, x[:4], num_particles=4, max_rows=4, capture=capture)
    assert run is not None and torch.equal(expected, got) and torch.equal(after, torch.get_rng_state())


def test_a_check_compares_the_random_draws_too():
    """A program that draws one more random number (one its log-weights do not use) after a
    global changes: the values agree, the draws do not, and the check says so."""
    vae, x = _vae(), _x()
    extra = {"on": False}

    def model(x):
        if extra["on"]:
            torch.rand(())
        vae.model(x)

    capture = CapturedLogWeights()
    _pair(iwae, model, vae.guide, x, capture, num_particles=4, max_rows=4)
    extra["on"] = True
    with pytest.warns(CaptureFallbackWarning, match="drew other random numbers"):
        eager, captured = _pair(iwae, model, vae.guide, x, capture, num_particles=4, max_rows=4)
    assert torch.equal(eager, captured)
