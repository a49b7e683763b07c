"""Helpers of the distributed tests: a deterministic program, and ranks as spawned processes
on the loopback interface, each with a deadline so that a test can never hang."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
import traceback
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

N, D, LATENT = 60, 5, 2


class MapAutoencoder(nn.Module):
    """An autoencoder with a point-mass (``Delta``) guide, a learned global noise scale and a
    buffer: a step's gradient has no Monte Carlo noise, so that one process and several can
    be compared to floating-point tolerance. The data plate declares ``num_data`` (scaled by
    N/B)."""

    def __init__(self, die_at: int | None = None, how: str = "exit") -> None:
        super().__init__()
        self.encoder = nn.Linear(D, LATENT)
        self.decoder = nn.Linear(LATENT, D)
        self.register_buffer("offset", torch.zeros(D))  # a buffer the likelihood reads
        self.die_at, self.how = die_at, how
        self.calls = 0

    def model(self, x: torch.Tensor, num_data: int | None = None) -> None:
        pyro.module("map_ae", self)
        self.calls += 1
        if self.die_at is not None and self.calls == self.die_at:
            if self.how == "sigterm":  # a signal to this rank alone
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                os._exit(3)  # a rank that dies mid-training, as kill -9 would
        log_scale = pyro.param("log_scale", torch.zeros(D, dtype=x.dtype, device=x.device))
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(batch, LATENT), 1.0).to_event(1))
            loc = self.decoder(z) + self.offset
            pyro.sample("x", dist.Normal(loc, log_scale.exp()).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> None:
        pyro.module("map_ae", self)
        batch = x.shape[0]
        with pyro.plate("data", num_data or batch, subsample=torch.arange(batch, device=x.device)):
            pyro.sample("z", dist.Delta(self.encoder(x), event_dim=1))


def data(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(N, D, generator=gen, dtype=dtype) @ torch.randn(D, D, generator=gen, dtype=dtype)


def build(die_at: int | None = None, how: str = "exit") -> MapAutoencoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MapAutoencoder(die_at, how).double()


def fit_options(directory: Path, epochs: int, *, batch_size: int) -> dict:
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": 0.05,
        "seed": 0,
        "checkpoint": directory / "checkpoint.pt",
        "progress": False,
        "eval_max_points": 20,
    }


def parameters(net: MapAutoencoder, result) -> dict[str, torch.Tensor]:
    with pyro.get_param_store().scope(result.param_state):
        scale = pyro.param("log_scale").detach().clone()
    return {**{k: v.detach().clone() for k, v in net.state_dict().items()}, "log_scale": scale}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(
    rank: int,
    world: int,
    port: int,
    directory: str,
    epochs: int,
    batch_size: int,
    die_at,
    timeout,
    how,
    resume,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from pyro_vae.train import Distributed, fit

    out = Path(directory)
    try:
        net = build(die_at if rank == world - 1 else None, how)
        with torch.no_grad():  # ranks other than 0 start elsewhere: rank 0's state must reach them
            for t in (*net.parameters(), *net.buffers()):
                t.add_(float(rank))
        result = fit(
            net.model,
            net.guide,
            data(),
            distributed=Distributed(timeout=timeout),
            resume=resume,
            **fit_options(out, epochs, batch_size=batch_size),
        )
        torch.save({"params": parameters(net, result), "history": result.history}, out / f"rank{rank}.pt")
    except BaseException as e:  # the parent reads what went wrong
        (out / f"rank{rank}.err").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        # exit without the interpreter's teardown: after a lost peer, gloo's threads can abort
        # the process there ("terminate called without an active exception", -6), once the
        # error above has been raised and written (docs/scaling-up.md, "Failures")
        os._exit(1)


def spawn_ranks(
    world: int,
    directory: Path,
    *,
    epochs: int,
    batch_size: int,
    die_at: int | None = None,
    how: str = "exit",
    resume: bool = False,
    timeout: float = 60.0,
    deadline: float = 120.0,
) -> list[int | None]:
    """Run ``world`` ranks of :func:`fit` on the deterministic program; their exit codes.
    Every process is killed at ``deadline`` seconds (its exit code then ``None``)."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank,
            args=(r, world, port, str(directory), epochs, batch_size, die_at, timeout, how, resume),
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    codes: list[int | None] = []
    end = time.monotonic() + deadline
    for p in procs:
        p.join(max(end - time.monotonic(), 0.1))
        if p.is_alive():
            p.kill()
            p.join(5)
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes
