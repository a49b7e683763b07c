"""Running a model/guide pair for K particles: vectorized when the program broadcasts over
an extra leading dimension, one particle at a time when it does not."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro.poutine.runtime import Message
from torch.distributions import Categorical, Distribution, Independent, OneHotCategorical

from pyro_vae.errors import InputError
from pyro_vae.infer.layout import PARTICLES, PlateLayout, broadcast_error, find_layout
from pyro_vae.infer.modes import evaluation_mode, frozen_evaluation
from pyro_vae.infer.sites import Site, SiteRecorder, ValueHook

VECTORIZED, SEQUENTIAL, SINGLE = "vectorized", "sequential", "single"
"""How a run drew its particles: one pass over a particle plate, one pass per particle, or a
single particle."""

HookFactory = Callable[[int | None], ValueHook | None]
"""``factory(None)``: the value hook of a vectorized run (all particles at once);
``factory(k)``: the hook of particle ``k`` alone."""


def cuda_devices(args: Iterable[Any]) -> list[torch.device]:
    """The GPU the tensors among ``args`` are on (at most one), whose generator a run draws from."""
    return [a.device for a in args if isinstance(a, torch.Tensor) and a.device.type == "cuda"][:1]


def torch_rng_state(devices: list[torch.device]) -> tuple:
    """PyTorch's default generators: the CPU's and ``devices``'."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def set_torch_rng_state(state: tuple, devices: list[torch.device]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1], strict=True):
        torch.cuda.set_rng_state(s, d)


def rng_state(devices: list[torch.device]) -> tuple:
    """The random states a program may draw from: PyTorch's default generators (see
    :func:`torch_rng_state`), Python's ``random`` and NumPy's global generator. (Generators a
    program makes itself, ``torch.Generator`` objects, are not known here.)"""
    return (*torch_rng_state(devices), random.getstate(), np.random.get_state())


def set_rng_state(state: tuple, devices: list[torch.device]) -> None:
    set_torch_rng_state(state[:2], devices)
    random.setstate(state[2])
    np.random.set_state(state[3])


@contextmanager
def forked_rng(args: Iterable[Any]) -> Iterator[None]:
    """Fork the random states of :func:`rng_state` (PyTorch's CPU generator and that of the
    GPU the data ``args`` are on, Python's ``random``, NumPy's global generator: a program
    may draw from any): for passes that discover a program's structure without changing any
    later draw."""
    devices = cuda_devices(args)
    state = rng_state(devices)
    try:
        yield
    finally:
        set_rng_state(state, devices)


@contextmanager
def probing(args: Iterable[Any], *, gradients: bool = False) -> Iterator[None]:
    """The setting of a run that only looks at a program (its structure, its parameters,
    one evaluation): the random number generators forked (no later draw changes), every
    module in eval mode (no running statistic changes) and, unless ``gradients``, no
    autograd."""
    with forked_rng(args), evaluation_mode() if gradients else frozen_evaluation():
        yield


def _rows(args: tuple) -> int | None:
    return args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0 else None


@dataclass
class ProgramPlan:
    """What a probe learned of a program's structure, reused every step.

    :ivar nesting: ``max_plate_nesting``.
    :ivar plate_name: the data plate's name as given (``None``: found by size).
    :ivar vectorize: whether several particles can run in one pass (``None``: not yet known).
    :ivar local_params: parameters with one entry per element of a plate (Pyro's
        ``AutoNormal``), with the plates' names: the rows of such a plate cannot be split
        into chunks or minibatches without splitting the parameters with them.
    """

    nesting: int
    plate_name: str | None = None
    vectorize: bool | None = None
    local_params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    found_plate: str | None = field(default=None, repr=False)
    """The data plate found by size in an earlier run (looked up by name afterwards)."""
    fallback_reason: str = field(default="", repr=False)


def _within_particles(fn: Callable, particles: tuple[int, int] | None) -> Callable:
    """``fn`` inside a plate of ``particles = (K, dim)`` particles (``fn`` itself for ``None``)."""
    if particles is None:
        return fn

    def wrapped(*a: Any, **k: Any) -> Any:
        with pyro.plate(PARTICLES, particles[0], dim=particles[1]):
            return fn(*a, **k)

    return wrapped


def _recorded(
    fn: Callable, args: tuple, kwargs: dict, recorder: SiteRecorder, particles: tuple | None
) -> None:
    """Run ``fn`` under ``recorder`` (enclosing handlers see its sites as they see those of
    Pyro's own ELBOs; SVI's parameter capture sees its parameters)."""
    with recorder:
        _within_particles(fn, particles)(*args, **kwargs)


def record_program(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    *,
    replay: dict[str, Site] | None = None,
    particles: tuple[int, int] | None = None,
    value_hook: ValueHook | None = None,
    relaxed: bool = False,
) -> SiteRecorder:
    """One recorded run of one program (the guide, or the model with its latents replayed
    from ``replay``): its sites and the parameters it read (see :class:`SiteRecorder`)."""
    recorder = SiteRecorder(replay, value_hook=value_hook, relaxed=relaxed)
    _recorded(fn, args, kwargs, recorder, particles)
    return recorder


def record(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    particles: tuple[int, int] | None = None,
    value_hook: ValueHook | None = None,
    relaxed: bool = False,
    params: list[str] | None = None,
    local_params: dict[str, tuple[str, ...]] | None = None,
) -> tuple[dict[str, Site], dict[str, Site]]:
    """One run of the guide, then the model with its latents replayed from the guide:
    ``(model sites, guide sites)``. ``particles=(K, dim)`` runs both inside a plate of
    ``K`` particles at ``dim``. Gradients flow as in the program. The names of the
    parameters the guide and then the model read are appended to ``params``, and those
    with one entry per plate element to ``local_params`` (see :class:`SiteRecorder`)."""
    g = record_program(guide, args, kwargs, particles=particles, value_hook=value_hook, relaxed=relaxed)
    m = record_program(model, args, kwargs, replay=g.sites, particles=particles)
    if params is not None:
        params.extend(n for n in (*g.params, *m.params) if n not in params)
    if local_params is not None:
        local_params.update(g.local_params)
        local_params.update(m.local_params)
    return m.sites, g.sites


def plan_program(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    plate_name: str | None = None,
    max_plate_nesting: int | None = None,
) -> ProgramPlan:
    """Run the program once to find its plate nesting, with modules in eval mode, without
    gradients and with the random number generators forked: the probe changes no running
    statistic, no parameter and no later draw. It runs on the batch it is given (never on
    a single row, which BatchNorm in train mode refuses)."""
    local: dict[str, tuple[str, ...]] = {}
    with probing(args):
        model_sites, guide_sites = record(model, guide, args, kwargs, local_params=local)
    dims = [
        -frame.dim
        for site in (*model_sites.values(), *guide_sites.values())
        for frame in site.frames
        if frame.dim is not None
    ]
    nesting = max(dims, default=0)
    if max_plate_nesting is not None:
        if nesting > max_plate_nesting:
            raise InputError(
                f"the program nests {nesting} plates, more than max_plate_nesting={max_plate_nesting}"
            )
        nesting = max_plate_nesting
    if not model_sites:
        raise InputError("the model has no sample sites")
    return ProgramPlan(nesting=nesting, plate_name=plate_name, local_params=local)


def gumbel_max_sample(fn: Distribution) -> torch.Tensor | None:
    """A draw from a ``Categorical`` or ``OneHotCategorical`` site (possibly inside
    ``Independent``) by the Gumbel-max trick, :math:`\\arg\\max_i(\\alpha_i + g_i)` with
    :math:`g_i` standard Gumbel (:func:`gumbel_noise`): exactly the categorical
    distribution, in a few vectorized operations (``torch.multinomial`` costs a call per row,
    which dominates when a particle plate has expanded the distribution); ``None`` for
    other distributions."""
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, Categorical | OneHotCategorical):
        return None
    logits = base.logits
    index = (logits + gumbel_noise(logits)).argmax(-1)
    if isinstance(base, Categorical):
        return index
    return _one_hot(index, logits)


def _one_hot(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``F.one_hot(index, like.shape[-1]).to(like)`` by a scatter: the same values, without
    reading the indices' values (which ``F.one_hot`` does to check them, and which a captured
    graph cannot: :class:`~pyro_vae.infer.captured.CapturedLoss`)."""
    return torch.zeros_like(like).scatter_(-1, index.unsqueeze(-1), 1.0)


def one_hot_sample(fn: Distribution) -> torch.Tensor | None:
    """A draw from a ``OneHotCategorical`` site (possibly inside ``Independent``) exactly as
    ``fn.sample()`` draws it (the same ``torch.multinomial`` call, so the same value for the
    same random state), its one-hot vector made by :func:`_one_hot`; ``None`` for other
    distributions."""
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, OneHotCategorical) or type(base).sample is not OneHotCategorical.sample:
        return None
    return _one_hot(base._categorical.sample(), base.probs)


def _one_hot_hook(msg: Message) -> torch.Tensor | None:
    if msg["infer"].get("enumerate"):  # type: ignore[union-attr]
        return None  # enumerated, not drawn
    return one_hot_sample(msg["fn"])  # type: ignore[arg-type]


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel draws :math:`-\\log(-\\log U)`, :math:`U \\sim \\mathcal U(0, 1)` clamped
    away from 0 (``torch.rand`` is several times faster than ``exponential_`` on CPU)."""
    u = torch.rand_like(like).clamp_(min=torch.finfo(like.dtype).tiny)
    return -(-u.log()).log()


def _gumbel_max_hook(msg: Message) -> torch.Tensor | None:
    return gumbel_max_sample(msg["fn"])  # type: ignore[arg-type]


class ParticleRun:
    """The recorded sites of ``num_particles`` draws per datapoint.

    :ivar passes: ``(model sites, guide sites)`` per pass: one pass for a vectorized or
        single-particle run, one per particle for a sequential run.
    :ivar layout: where particles and datapoints sit in the log-densities (found on first
        use: the totals of a training step never need it).
    :ivar mode: :data:`VECTORIZED`, :data:`SEQUENTIAL` or :data:`SINGLE`.
    :ivar layout_error: why the run has no data plate (``None`` when it has one).
    """

    __slots__ = ("_layout", "args", "mode", "num_particles", "passes", "plan")

    def __init__(
        self,
        passes: tuple[tuple[dict[str, Site], dict[str, Site]], ...],
        num_particles: int,
        mode: str,
        *,
        plan: ProgramPlan,
        args: tuple = (),
        layout: tuple[PlateLayout, str | None] | None = None,
    ) -> None:
        self.passes, self.num_particles, self.mode, self.plan, self.args = (
            passes,
            num_particles,
            mode,
            plan,
            args,
        )
        self._layout = layout

    def _found(self) -> tuple[PlateLayout, str | None]:
        if self._layout is None:
            self._layout = _find_layout(self.passes, self.plan, self.args)
        return self._layout

    @property
    def layout(self) -> PlateLayout:
        return self._found()[0]

    @property
    def layout_error(self) -> str | None:
        return self._found()[1]

    def guide_values(self, name: str) -> torch.Tensor:
        """The values of guide site ``name`` for all particles, particles first: ``(K, ...)``
        (a sequential run's passes stacked)."""
        if name not in self.passes[0][1]:
            raise InputError(f"the guide has no sample site '{name}'")
        values = [g[name].value for _, g in self.passes]
        if self.mode == VECTORIZED:
            return values[0].reshape(values[0].shape[-(self.layout.nesting + 1) - self._event_dim(name) :])
        return torch.stack(values)

    def _event_dim(self, name: str) -> int:
        return len(self.passes[0][1][name].fn.event_shape)


def _chain(*hooks: ValueHook | None) -> ValueHook | None:
    live = [h for h in hooks if h is not None]
    if len(live) <= 1:
        return live[0] if live else None

    def hook(msg: Message) -> torch.Tensor | None:
        for h in live:
            value = h(msg)
            if value is not None:
                return value
        return None

    return hook


class _NotBroadcast(Exception):
    """A vectorized run that completed with particles in the wrong place (see
    :func:`~pyro_vae.infer.layout.broadcast_error`)."""


def run_particles(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    plan: ProgramPlan,
    num_particles: int,
    hooks: HookFactory | None = None,
    relaxed: bool = False,
    gumbel_max: bool = False,
    vectorize: bool | None = None,
) -> ParticleRun:
    """Draw ``num_particles`` particles per datapoint.

    One pass over a particle plate left of the program's plates when the program broadcasts
    over it; otherwise (a guide that concatenates a sampled value with the data, say) one
    pass per particle, which any program that ``pyro.infer.SVI`` trains allows. The first
    vectorized attempt that fails with an error of the program's own falls back to
    sequential passes and ``plan`` remembers it. ``vectorize=True`` forbids the fallback,
    ``False`` skips the attempt.

    :param hooks: value hooks for guide sites (see :data:`HookFactory`).
    :param relaxed: values from the hooks are relaxed stand-ins (see :class:`Site`).
    :param gumbel_max: in a vectorized pass, draw categorical guide sites by the Gumbel-max
        trick (the same distribution, cheaper than ``torch.multinomial`` per row).
    """
    want = plan.vectorize if vectorize is None else vectorize
    one_hot = None if relaxed else _one_hot_hook  # a hook's value would be taken for a relaxed one
    if num_particles == 1:
        hook = _chain(hooks(0) if hooks else None, one_hot)
        passes = (record(model, guide, args, kwargs, value_hook=hook, relaxed=relaxed),)
        return _finish(passes, plan, args, 1, SINGLE)
    if want is not False:
        hook = _chain(
            hooks(None) if hooks else None,
            _gumbel_max_hook if gumbel_max else None,
            one_hot,
        )
        try:
            passes = (
                record(
                    model,
                    guide,
                    args,
                    kwargs,
                    particles=(num_particles, -(plan.nesting + 1)),
                    value_hook=hook,
                    relaxed=relaxed,
                ),
            )
            if plan.vectorize is None:  # the first vectorized run: check it broadcast as it should
                problem = broadcast_error(
                    [*passes[0][0].values(), *passes[0][1].values()],
                    nesting=plan.nesting,
                    particles=num_particles,
                )
                if problem is not None:
                    raise _NotBroadcast(problem)
            run = _finish(passes, plan, args, num_particles, VECTORIZED)
            plan.vectorize = True
            return run
        except InputError:
            raise
        except (_NotBroadcast, RuntimeError, ValueError, IndexError, TypeError, AssertionError) as e:
            if want is True:
                raise InputError(
                    f"the program does not broadcast over a leading particle dimension ({e}); "
                    "pass vectorize_particles=False (or None) to draw particles one at a time"
                ) from e
            plan.vectorize = False
            plan.fallback_reason = f"{type(e).__name__}: {e}"
    passes = tuple(
        record(
            model,
            guide,
            args,
            kwargs,
            value_hook=_chain(hooks(k) if hooks else None, one_hot),
            relaxed=relaxed,
        )
        for k in range(num_particles)
    )
    return _finish(passes, plan, args, num_particles, SEQUENTIAL)


def _find_layout(
    passes: tuple[tuple[dict[str, Site], dict[str, Site]], ...], plan: ProgramPlan, args: tuple
) -> tuple[PlateLayout, str | None]:
    model_sites, guide_sites = passes[0]
    sites = [*model_sites.values(), *guide_sites.values()]
    rows = _rows(args)
    name = plan.plate_name or plan.found_plate  # once found, the data plate is looked up by name
    layout, error = find_layout(sites, plate_name=name, nesting=plan.nesting, rows=rows)
    if error is not None and plan.plate_name is None and name is not None:
        layout, error = find_layout(sites, plate_name=None, nesting=plan.nesting, rows=rows)
    if error is not None and plan.plate_name is not None:
        raise InputError(error)
    plan.found_plate = layout.data_plate if error is None else None
    return layout, error


def _finish(
    passes: tuple[tuple[dict[str, Site], dict[str, Site]], ...],
    plan: ProgramPlan,
    args: tuple,
    num_particles: int,
    mode: str,
) -> ParticleRun:
    run = ParticleRun(passes, num_particles, mode, plan=plan, args=args)
    if plan.plate_name is not None:  # a plate the user named is checked at once
        run.layout  # noqa: B018
    return run
