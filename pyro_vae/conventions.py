"""Conventions shared by models, data and inference: one home for each.

- :data:`AUXILIARY`: the ``infer`` key of observed model sites that are extra terms of the
  training objective but not part of the model's density (e.g. M2's classification term).
- :data:`UNLABELLED`: the integer label of a datapoint whose label is unknown.
"""

from __future__ import annotations

from typing import Any

AUXILIARY = "auxiliary_term"
"""``infer`` key of observed sites that are extra terms of the training objective but not
part of the model's density (e.g. the classification term of the M2 model): evaluation
leaves them out; pyro_vae's estimators add them, scaled, to what they maximize."""

UNLABELLED = -1
"""Label of a datapoint whose class is unknown (semi-supervised data)."""


def is_auxiliary(infer: dict[str, Any]) -> bool:
    """Whether a site's ``infer`` dict marks it :data:`AUXILIARY`."""
    return bool(infer.get(AUXILIARY, False))
