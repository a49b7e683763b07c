"""The two records every corpus program is described by (re-exported by ``tests.programs``)."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Program:
    model: Callable
    guide: Callable
    # exact_log_p(*data) -> (n,) exact log p(x_n) under the CURRENT parameters, or None.
    exact_log_p: Callable[..., torch.Tensor] | None
    # every nn.Module the program uses (empty for bare pyro.param programs)
    modules: list[torch.nn.Module]
    # exact per-datapoint value of pyro.factor / observed sites in the GUIDE, else None
    extra_guide_terms: Callable[..., torch.Tensor] | None = None


@dataclass(frozen=True)
class Case:
    name: str
    idiom: str
    build: Callable[[], Program]
    data: Callable[[int], tuple[torch.Tensor, ...]]
    kwargs: dict = field(default_factory=dict)
    discrete: bool = False
    all_discrete: bool = False
    broadcasts: bool = True
    has_num_data: bool = False
    train_mode_modules: bool = False
