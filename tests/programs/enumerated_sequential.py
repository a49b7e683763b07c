"""The mixture of ``enumerated_parallel`` with the guide's label marked
``infer={"enumerate": "sequential"}``: ``TraceEnum_ELBO`` runs the model once per value."""

import pyro
import pyro.distributions as dist

from ._common import seeded
from ._types import Case, Program
from .enumerated_parallel import GaussianMixture, data


class SequentialMixture(GaussianMixture):
    def guide(self, x):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(probs=self.classifier(x)), infer={"enumerate": "sequential"})


def build() -> Program:
    # same seed as enumerated_parallel: identical initial parameters, so the two exact ELBOs agree
    with seeded(4):
        mix = SequentialMixture().double()
    return Program(mix.model, mix.guide, mix.exact_log_p, [mix])


CASE = Case(
    name="enumerated_sequential",
    idiom='All-discrete guide q(y|x) whose label has infer={"enumerate": "sequential"}, '
    "trained with TraceEnum_ELBO(max_plate_nesting=1) (one model run per label value).",
    build=build,
    data=data,
    discrete=True,
    all_discrete=True,
)
