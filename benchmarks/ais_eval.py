"""Annealed importance sampling against L_K: cost per datapoint and error to the exact log p(x).

Part 1, the linear-Gaussian model (exact log p(x)) with a guide deliberately far from the
posterior: for each number of AIS steps T, the wall time per datapoint of
``pyro_vae.bounds.ais`` (M chains) and its error to exact, and the error of L_K with K chosen
so that ``pyro_vae.bounds.iwae`` takes the same wall time (K = AIS time / L_K time per
particle, measured first). Each row is the median over ``--repeats`` interleaved repeats.

Part 2 (``--digits``): a small Bernoulli VAE trained with ``pyro_vae.train.fit`` on the 8x8
digits (binarized) for a few epochs, or with ``--data fashion-mnist`` a 784-dimensional one on
Fashion-MNIST, then L_K (K = ``--digits-k``) and AIS on test points: how far L_K sits below
AIS (no exact value exists there). ``--skip-exact`` runs part 2 alone.

    python benchmarks/ais_eval.py [--steps 10,100,1000] [--repeats 3] [--digits] [--json out.json]
        [--quick]

``--quick`` (what ``benchmarks/run_all.py`` runs): T in 10 and 100, one repeat.
    python benchmarks/ais_eval.py --skip-exact --digits --data fashion-mnist --hidden 200 \\
        --digits-latent 20 --digits-epochs 10 --digits-points 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import pyro
import torch
from _common import emit, environment

from pyro_vae.bounds import ais, iwae
from pyro_vae.infer.hmc import HMCOptions
from pyro_vae.models import LinearGaussian


def linear_gaussian(features: int, latent: int, points: int, perturb: float, seed: int = 0):
    """A linear-Gaussian model, its guide set to the exact posterior and then perturbed, data
    drawn from the model, and the exact log p(x) per datapoint."""
    torch.manual_seed(seed)
    m = LinearGaussian(features, latent).double()
    with torch.no_grad():
        m.generative.weight.mul_(2.0)  # a posterior narrower than the prior
        m.set_guide_to_posterior()
        m.recognition.weight.add_(perturb * torch.randn_like(m.recognition.weight))
        m.recognition.bias.add_(perturb * torch.randn_like(m.recognition.bias))
        x = m.marginal().sample((points,))
        exact = m.log_marginal(x)
    return m, x, exact


def _timed(fn):
    tic = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tic


def part_linear_gaussian(args: argparse.Namespace) -> list[dict]:
    m, x, exact = linear_gaussian(args.features, args.latent, args.points, args.perturb)
    hmc = HMCOptions(num_leapfrog=args.leapfrog)
    rows = []
    # L_K cost per particle, measured once at a K large enough to time reliably
    _, t_probe = _timed(lambda: iwae(m.model, m.guide, x, num_particles=2000))
    per_particle = t_probe / 2000
    for steps in args.steps:
        times, errors, k_errors, ses = [], [], [], []
        k = None
        for _ in range(args.repeats):
            r, t = _timed(
                lambda steps=steps: ais(m.model, m.guide, x, num_steps=steps, num_chains=args.chains, hmc=hmc)
            )
            k = max(1, round(t / per_particle))
            lk, t_lk = _timed(lambda k=k: iwae(m.model, m.guide, x, num_particles=k))
            times.append((t, t_lk))
            errors.append((r.value - exact).mean().item())
            ses.append(((r.standard_error**2).sum().sqrt() / args.points).item())
            k_errors.append((lk - exact).mean().item())
        rows.append(
            {
                "steps": steps,
                "chains": args.chains,
                "ais_s_per_point": statistics.median(t for t, _ in times) / args.points,
                "lk_s_per_point": statistics.median(t for _, t in times) / args.points,
                "matched_k": k,
                "ais_error": statistics.median(errors),
                "ais_se": statistics.median(ses),
                "lk_error": statistics.median(k_errors),
                "acceptance": r.acceptance_rate.mean().item(),
            }
        )
    elbo_err = (m.exact_elbo(x) - exact).mean().item()
    print(
        f"linear-Gaussian: {args.features} features, {args.latent} latents, {args.points} points, guide "
        f"perturbed by {args.perturb} (ELBO - log p(x) = {elbo_err:.3f} nats), {args.chains} chains, "
        f"{args.leapfrog} leapfrog steps, {args.repeats} repeats (medians)"
    )
    print(
        f"{'T':>6} {'AIS s/pt':>9} {'AIS - exact':>12} {'± se':>7} {'accept':>7} {'K (same time)':>14} "
        f"{'L_K - exact':>12}"
    )
    for r in rows:
        print(
            f"{r['steps']:>6} {r['ais_s_per_point']:>9.4f} {r['ais_error']:>12.4f} {r['ais_se']:>7.4f} "
            f"{r['acceptance']:>7.2f} {r['matched_k']:>14} {r['lk_error']:>12.4f}"
        )
    return rows


class Mixture:
    """z ~ N(0, 1); x | z ~ sum_c pi_c N(mu_c + a z, s^2 I) with c summed out in the model: a
    bimodal posterior. log p(x) = logsumexp_c log pi_c + log N(x; mu_c, a a^T + s^2 I)."""

    logits = torch.tensor([0.3, -0.3], dtype=torch.float64)
    mu = torch.tensor([[-1.5, 1.0], [1.5, -0.5]], dtype=torch.float64)
    a = torch.tensor([1.0, 0.6], dtype=torch.float64)
    s = 0.5

    def model(self, x):
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            comp = dist.Normal(self.mu + z[..., None, None] * self.a, self.s).to_event(1)
            pyro.sample("x", dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp), obs=x)

    def guide(self, x):
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.5))

    def log_marginal(self, x):
        import pyro.distributions as dist

        cov = torch.outer(self.a, self.a) + self.s**2 * torch.eye(2, dtype=x.dtype)
        comps = dist.MultivariateNormal(self.mu, covariance_matrix=cov).log_prob(x[:, None, :])
        return (comps + self.logits.log_softmax(0)).logsumexp(-1)


def part_adaptation(args: argparse.Namespace) -> list[dict]:
    """The bias of step-size adaptation: (AIS - exact) / SE on the mixture, 200 steps, 256
    chains, for the estimate's own chains adapting (online, per chain or shared), pilot
    chains (the default) and fixed step sizes."""
    mix = Mixture()
    x = torch.tensor([[-2.0, 0.5], [1.0, -1.0], [0.0, 0.3]], dtype=torch.float64)
    exact = mix.log_marginal(x)
    cases = {
        "online, per chain": ({"adaptation": "online"}, HMCOptions(num_leapfrog=2)),
        "online, shared": ({"adaptation": "online"}, HMCOptions(num_leapfrog=2, shared_step_size=True)),
        "pilot (default)": ({}, HMCOptions(num_leapfrog=2)),
        "fixed 0.3": ({}, HMCOptions(num_leapfrog=2, adapt=False, step_size=0.3)),
    }
    rows = []
    print("adaptation on the two-component mixture (200 steps, 256 chains, 3 points): (AIS - exact) / SE")
    for name, (extra, hmc) in cases.items():
        pyro.set_rng_seed(0)
        r = ais(mix.model, mix.guide, x, num_steps=200, num_chains=256, hmc=hmc, **extra)
        z = ((r.value - exact) / r.standard_error).tolist()
        rows.append({"case": name, "z": z, "se": r.standard_error.tolist()})
        print(f"  {name:<20} " + " ".join(f"{v:+6.1f}" for v in z))
    return rows


def _trained_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Binarized training and test images: the 8x8 digits (1500 for training), or with
    ``--data fashion-mnist`` the first ``--train-size`` of a permutation of Fashion-MNIST's
    70,000 28x28 images (Debian's dataset-fashion-mnist)."""
    from pyro_vae.data import FASHION_MNIST_DIR, load_digits, load_idx

    if args.data == "fashion-mnist":
        data = load_idx(FASHION_MNIST_DIR, name="fashion-mnist", binarize=True, seed=0)
        n_train, name = args.train_size, "Fashion-MNIST 28x28 (binarized)"
    else:
        data = load_digits(binarize=True, seed=0)
        n_train, name = 1500, "digits 8x8 (binarized)"
    torch.manual_seed(0)
    perm = torch.randperm(data.x.shape[0])
    return data.x[perm[:n_train]], data.x[perm[n_train:]][: args.digits_points], name


def part_digits(args: argparse.Namespace) -> dict:
    from pyro_vae.likelihoods import Bernoulli
    from pyro_vae.models import VAE
    from pyro_vae.train import fit

    train, test, name = _trained_data(args)
    features = train.shape[1]
    vae = VAE(Bernoulli(features), latent_dim=args.digits_latent, hidden=(args.hidden,))
    tic = time.perf_counter()
    result = fit(
        vae.model, vae.guide, train, epochs=args.digits_epochs, batch_size=100, lr=3e-3, progress=False
    )
    t_fit = time.perf_counter() - tic
    lk, t_lk = _timed(
        lambda: iwae(vae.model, vae.guide, test, num_particles=args.digits_k, return_error=True)
    )
    hmc = HMCOptions(num_leapfrog=args.leapfrog)
    r, t_ais = _timed(
        lambda: ais(vae.model, vae.guide, test, num_steps=args.digits_steps, num_chains=args.chains, hmc=hmc)
    )
    from pyro_vae.bounds import elbo

    el = elbo(vae.model, vae.guide, test, num_particles=100)
    gap = r.value - lk.value
    n = test.shape[0]
    out = {
        "data": name,
        "hidden": args.hidden,
        "latent": args.digits_latent,
        "train_size": int(train.shape[0]),
        "epochs": args.digits_epochs,
        "fit_s": t_fit,
        "final_train_objective": result.history[-1].get("train_objective") if result.history else None,
        "points": n,
        "elbo": el.mean().item(),
        "k": args.digits_k,
        "lk": lk.value.mean().item(),
        "lk_s": t_lk,
        "ais_steps": args.digits_steps,
        "ais": r.value.mean().item(),
        "ais_se_mean": ((r.standard_error**2).sum().sqrt() / n).item(),
        "ais_s": t_ais,
        "ais_minus_lk": gap.mean().item(),
        "ais_minus_lk_se": (gap.std() / n**0.5).item(),
        "acceptance": r.acceptance_rate.mean().item(),
        "step_size": r.step_size.mean().item(),
    }
    print(
        f"{name}, VAE {features}-{args.hidden}-{args.digits_latent} trained {args.digits_epochs} epochs "
        f"on {train.shape[0]} images ({t_fit:.0f} s), {n} test points:"
    )
    print(f"  ELBO {out['elbo']:.3f}   L_{args.digits_k} {out['lk']:.3f} ({t_lk:.1f} s)")
    print(
        f"  AIS ({args.digits_steps} steps x {args.chains} chains) {out['ais']:.3f} "
        f"± {out['ais_se_mean']:.3f} ({t_ais:.1f} s, acceptance {out['acceptance']:.2f})"
    )
    print(f"  AIS - L_K = {out['ais_minus_lk']:.3f} ± {out['ais_minus_lk_se']:.3f} nats per datapoint")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", default="10,100,1000")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--latent", type=int, default=5)
    parser.add_argument("--perturb", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--digits", action="store_true")
    parser.add_argument("--digits-epochs", type=int, default=30)
    parser.add_argument("--digits-latent", type=int, default=5)
    parser.add_argument("--digits-points", type=int, default=100)
    parser.add_argument("--digits-k", type=int, default=5000)
    parser.add_argument("--digits-steps", type=int, default=1000)
    parser.add_argument(
        "--data", choices=["digits", "fashion-mnist"], default="digits", help="the trained VAE's data"
    )
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the trained VAE")
    parser.add_argument("--train-size", type=int, default=10000, help="Fashion-MNIST training images")
    parser.add_argument("--skip-exact", action="store_true", help="only part 2 (the trained VAE)")
    parser.add_argument(
        "--json", default=None, help="write the results as JSON here (-: last line of stdout)"
    )
    parser.add_argument("--quick", action="store_true", help="T in 10 and 100, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = "10,100", 1
    args.steps = [int(s) for s in args.steps.split(",")]
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {torch.get_num_threads()} thread")
    out: dict = {"load_average": load}
    if not args.skip_exact:
        out["linear_gaussian"] = part_linear_gaussian(args)
        out["adaptation"] = part_adaptation(args)
    if args.digits:
        out["digits"] = part_digits(args)
    out["load_average_end"] = os.getloadavg()
    out["environment"] = environment()
    if "linear_gaussian" in out:  # the figures to compare between runs: AIS's error over L_K's, same time
        out["ratios"] = {
            f"|AIS error| / |L_K error|, T={row['steps']}": abs(row["ais_error"]) / abs(row["lk_error"])
            for row in out["linear_gaussian"]
            if row["lk_error"] != 0
        }
    print(f"load average at the end {out['load_average_end'][0]:.2f}")
    emit(out, args.json)


if __name__ == "__main__":
    main()
