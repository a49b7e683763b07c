"""The inference core every pyro_vae tool goes through, for any Pyro model/guide pair:

- :class:`~pyro_vae.infer.sites.SiteRecorder`, the one recorder of sample sites;
- :class:`~pyro_vae.infer.layout.PlateLayout`, the one reduction of a term to per-datapoint values;
- :func:`~pyro_vae.infer.particles.run_particles`, particles vectorized where the program
  broadcasts and one at a time where it does not;
- :class:`~pyro_vae.infer.terms.Terms`, the per-datapoint log densities;
- :class:`~pyro_vae.infer.loss.ParticleLoss`, the one public loss base (and
  :class:`~pyro_vae.infer.captured.CapturedLoss`, its training step replayed from a captured graph,
  and :class:`~pyro_vae.infer.captured_log_weights.CapturedLogWeights`, an evaluation's
  chunks replayed the same way);
- :func:`~pyro_vae.infer.modes.evaluation_mode`, modules in eval mode during evaluation;
- :func:`~pyro_vae.infer.guide_density.guide_log_density`, the guide's density at given latents;
- :func:`~pyro_vae.infer.potential.latent_terms`, the log densities at given latents
  (unconstrained), and :func:`~pyro_vae.infer.hmc.hmc_transition`, HMC over them.
"""

from pyro_vae.infer.captured import CapturedLoss
from pyro_vae.infer.captured_log_weights import CapturedLogWeights
from pyro_vae.infer.guide_density import guide_log_density, per_datapoint_values
from pyro_vae.infer.hmc import HMCOptions, HMCState, hmc_transition
from pyro_vae.infer.layout import PlateLayout
from pyro_vae.infer.log_mean_exp import StreamingLogMeanExp, log_mean_exp
from pyro_vae.infer.loss import ParticleLoss, ParticleOptions, StatefulLoss
from pyro_vae.infer.mean_field_elbo import MeanFieldELBO
from pyro_vae.infer.modes import BufferSnapshot, evaluation_mode, frozen_evaluation
from pyro_vae.infer.particles import ParticleRun, ProgramPlan, plan_program, run_particles
from pyro_vae.infer.per_datapoint import LogTerms, chunked_log_terms, log_terms, max_plate_nesting
from pyro_vae.infer.potential import LatentSpace, LatentTerms, latent_terms, simulate
from pyro_vae.infer.sites import Site, SiteRecorder
from pyro_vae.infer.terms import Terms, collect_terms

__all__ = [
    "BufferSnapshot",
    "CapturedLogWeights",
    "CapturedLoss",
    "HMCOptions",
    "HMCState",
    "LatentSpace",
    "LatentTerms",
    "LogTerms",
    "MeanFieldELBO",
    "ParticleLoss",
    "ParticleOptions",
    "ParticleRun",
    "PlateLayout",
    "ProgramPlan",
    "Site",
    "SiteRecorder",
    "StatefulLoss",
    "StreamingLogMeanExp",
    "Terms",
    "chunked_log_terms",
    "collect_terms",
    "evaluation_mode",
    "frozen_evaluation",
    "guide_log_density",
    "hmc_transition",
    "latent_terms",
    "log_mean_exp",
    "log_terms",
    "max_plate_nesting",
    "per_datapoint_values",
    "plan_program",
    "run_particles",
    "simulate",
]
