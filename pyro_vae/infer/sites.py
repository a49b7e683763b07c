"""The one site recorder: what every pyro_vae tool keeps of a run of a Pyro program."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample
from torch.distributions import Distribution

from pyro_vae.conventions import is_auxiliary
from pyro_vae.errors import InputError
from pyro_vae.infer.log_prob import site_log_prob


class Site:
    """One sample site of a run: its distribution, value, scale, mask, plates and flags.

    A slotted record rather than Pyro's message dict: copying only these fields is most of
    what makes a recorded run cheaper than a full ``poutine.trace``.

    :ivar frames: the vectorized and sequential plates around the site (Pyro's
        ``cond_indep_stack``).
    :ivar auxiliary: an observed model site marked :data:`~pyro_vae.conventions.AUXILIARY` (a
        training term, not part of the model's density).
    :ivar auxiliary_latent: a guide latent marked ``infer={"is_auxiliary": True}`` (Pyro's
        autoguides): a guide-only variable whose density a later site completes.
    :ivar relaxed: the value was replaced by a reparameterized stand-in (a relaxed draw), so
        the site's own ``log_prob`` at that value is not a density of the value.
    """

    __slots__ = (
        "auxiliary",
        "auxiliary_latent",
        "fn",
        "frames",
        "is_observed",
        "mask",
        "name",
        "relaxed",
        "scale",
        "value",
    )

    def __init__(self, msg: Message, relaxed: bool = False) -> None:
        self.name: str = msg["name"]  # type: ignore[assignment]
        self.fn: Distribution = msg["fn"]  # type: ignore[assignment]
        self.value: torch.Tensor = msg["value"]  # type: ignore[assignment]
        self.scale: float | torch.Tensor = msg["scale"]
        self.mask: Any = msg["mask"]
        self.is_observed: bool = bool(msg["is_observed"])
        self.frames: tuple[CondIndepStackFrame, ...] = msg["cond_indep_stack"]  # a tuple in Pyro
        infer = msg["infer"]
        self.auxiliary: bool = is_auxiliary(infer) if infer else False  # type: ignore[arg-type]
        self.auxiliary_latent: bool = bool(infer.get("is_auxiliary", False)) if infer else False
        self.relaxed = relaxed

    @property
    def reparameterized(self) -> bool:
        """Whether gradients reach the value pathwise (``rsample``, or a relaxed stand-in)."""
        return self.relaxed or bool(self.fn.has_rsample)

    def replace(self, **changes: Any) -> Site:
        """A copy with some fields changed (e.g. a detached value or distribution)."""
        new = object.__new__(Site)
        for slot in Site.__slots__:
            setattr(new, slot, changes.get(slot, getattr(self, slot)))
        return new

    def log_prob(self) -> torch.Tensor:
        return site_log_prob(self.fn, self.value)

    def __repr__(self) -> str:
        kind = "observed" if self.is_observed else "latent"
        return f"Site({self.name!r}, {type(self.fn).__name__}, {kind})"


ValueHook = Callable[[Message], "torch.Tensor | None"]
"""Gives a latent site a value of the hook's choosing (``None``: leave it to the distribution);
the sample is then marked done, so the distribution's sampler is not called."""


class SiteRecorder(Messenger):
    """Records the sample sites of one run (not Pyro's subsample sites, nor the values that
    ``pyro.deterministic`` records) as :class:`Site` s,
    and the names of the parameters it reads (``params``; ``local_params``: those read
    inside plates with an ``event_dim``, one entry per plate element, with the plates'
    names), optionally replaying latent
    values from another record.

    :param replay: sites whose values the run's *latent* sites take (the guide's, when the
        model is run). Observed sites are never replayed.
    :param value_hook: chooses the values of latent sites that are not replayed (relaxed
        draws, fixed enumeration configurations, antithetic pairs, Gumbel-max draws).
    :param relaxed: whether values from ``value_hook`` are relaxed stand-ins (see :class:`Site`).
    """

    def __init__(
        self,
        replay: dict[str, Site] | None = None,
        *,
        value_hook: ValueHook | None = None,
        relaxed: bool = False,
    ) -> None:
        super().__init__()
        self.sites: dict[str, Site] = {}
        self._params: dict[str, None] = {}
        self.local_params: dict[str, tuple[str, ...]] = {}
        self.replay = replay
        self.value_hook = value_hook
        self.relaxed = relaxed
        self._hooked: set[str] = set()

    def _pyro_sample(self, msg: Message) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        if self.replay is not None:
            source = self.replay.get(msg["name"])  # type: ignore[arg-type]
            if source is not None and not source.is_observed:
                msg["value"] = source.value
                msg["done"] = True
                return
        if self.value_hook is not None and not msg["done"]:
            value = self.value_hook(msg)
            if value is not None:
                msg["value"] = value
                msg["done"] = True
                self._hooked.add(msg["name"])  # type: ignore[arg-type]

    def _pyro_post_param(self, msg: Message) -> None:
        name: str = msg["args"][0]  # type: ignore[index]
        self._params[name] = None
        if msg["kwargs"].get("event_dim") is not None:  # type: ignore[union-attr]
            plates = tuple(f.name for f in msg["cond_indep_stack"] if f.dim is not None)
            if plates:  # a parameter per plate entry, subsampled by the plate (Pyro's AutoNormal)
                self.local_params[name] = plates

    @property
    def params(self) -> list[str]:
        """Names of the parameters the run read, in the order first read."""
        return list(self._params)

    def _pyro_post_sample(self, msg: Message) -> None:
        if site_is_subsample(msg) or msg["infer"].get("_deterministic"):  # type: ignore[union-attr]
            return  # pyro.deterministic records a value, not a density
        name: str = msg["name"]  # type: ignore[assignment]
        if name in self.sites:
            raise InputError(f"sample site '{name}' appears twice in one run of the program")
        self.sites[name] = Site(msg, relaxed=self.relaxed and name in self._hooked)
