"""Inference utilities that work on any Pyro model/guide pair."""

from pyro_vae.infer.mean_field_elbo import MeanFieldELBO
from pyro_vae.infer.per_datapoint import LogTerms, log_terms, max_plate_nesting

__all__ = ["LogTerms", "MeanFieldELBO", "log_terms", "max_plate_nesting"]
