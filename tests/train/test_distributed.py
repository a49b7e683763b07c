"""Data-parallel training (pyro_vae.train.distributed): ranks on the loopback interface with
the gloo backend, each test with deadlines so that it stops by itself."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.errors import InputError
from pyro_vae.train import Distributed, fit, load_checkpoint
from tests.train._distributed import build, data, fit_options, free_port, parameters, spawn_ranks

pytestmark = pytest.mark.slow


def _single(directory, epochs, *, batch_size, resume=False):
    net = build()
    result = fit(
        net.model, net.guide, data(), resume=resume, **fit_options(directory, epochs, batch_size=batch_size)
    )
    return parameters(net, result), result


def _assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-11, msg=k)


def test_two_ranks_take_the_steps_of_one_process_and_resume_on_one(tmp_path):
    """2 ranks with shards of 13 and 12 rows of each global batch of 25 (the last of 10: 5+5)
    end one epoch where one process with batch 25 does, on both ranks; the 2-rank checkpoint
    resumes in one process, and the 1-process checkpoint in 2 ranks, and both end where an
    uninterrupted one-process run does."""
    two, one, both = tmp_path / "two", tmp_path / "one", tmp_path / "both"
    for d in (two, one, both):
        d.mkdir()
    codes = spawn_ranks(2, two, epochs=1, batch_size=25)
    errors = [p.read_text() for p in two.glob("*.err")]
    assert codes == [0, 0], errors
    single, result = _single(one, 1, batch_size=25)
    ranks = [torch.load(two / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        _assert_close(r["params"], single)
    assert ranks[0]["params"]["log_scale"].abs().max() > 0.01  # the parameters did move
    assert ranks[0]["history"][0]["train_objective"] == pytest.approx(
        result.last("train_objective"), rel=1e-10
    )
    assert repr(ranks[1]["history"]) == repr(ranks[0]["history"])  # rank 0's record everywhere (NaN too)
    saved = load_checkpoint(two / "checkpoint.pt")
    assert saved["step"] == 3 and len(saved["rank_rng"]) == 2

    resumed, _ = _single(two, 2, batch_size=25, resume=True)  # 2 processes, then 1
    straight, _ = _single(both, 2, batch_size=25)
    _assert_close(resumed, straight)

    codes = spawn_ranks(2, one, epochs=2, batch_size=25, resume=True)  # 1 process, then 2
    assert codes == [0, 0], [p.read_text() for p in one.glob("*.err")]
    for r in range(2):
        _assert_close(torch.load(one / f"rank{r}.pt", weights_only=False)["params"], straight)


def test_a_killed_rank_is_a_clear_failure_not_a_hang(tmp_path):
    codes = spawn_ranks(2, tmp_path, epochs=50, batch_size=10, die_at=12, timeout=30.0, deadline=120.0)
    assert codes[1] == 3  # the rank that died
    assert codes[0] == 1, "rank 0 must fail by itself, before the test's deadline"
    message = (tmp_path / "rank0.err").read_text().splitlines()[0]
    assert message.startswith("DistributedError: rank 0 of 2 lost the other processes while")


def _one_rank_environment(monkeypatch) -> None:
    """torchrun's environment for a group of one process on this machine."""
    for k, v in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }.items():
        monkeypatch.setenv(k, v)


def test_one_rank_process_group_is_the_single_process_run(tmp_path, monkeypatch):
    """torchrun with one process: the same steps bitwise, and a checkpoint with its RNG."""
    _one_rank_environment(monkeypatch)
    net = build()
    result = fit(
        net.model,
        net.guide,
        data(),
        distributed=Distributed(timeout=20),
        **fit_options(tmp_path, 1, batch_size=25),
    )
    assert not torch.distributed.is_initialized()  # the group fit made is gone
    alone, _ = _single(tmp_path / "alone", 1, batch_size=25)
    for k, v in parameters(net, result).items():
        assert torch.equal(v, alone[k]), k
    assert len(load_checkpoint(tmp_path / "checkpoint.pt")["rank_rng"]) == 1


def test_distributed_outside_torchrun_is_an_input_error(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    net = build()
    with pytest.raises(InputError, match="torchrun's environment.*RANK"):
        fit(net.model, net.guide, data(), distributed=True, **fit_options(tmp_path, 1, batch_size=25))


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    codes = spawn_ranks(2, tmp_path, epochs=50, batch_size=10, die_at=12, how="sigterm", deadline=120.0)
    assert codes == [1, 1]
    for r in range(2):
        assert (tmp_path / f"rank{r}.err").read_text().startswith("TrainingInterrupted: stopped on SIGTERM")
    lines = [(tmp_path / f"rank{r}.err").read_text().splitlines()[0] for r in range(2)]
    assert lines[0] == lines[1]  # the same epoch and step on both
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["epoch_step"] > 0 and len(saved["rank_rng"]) == 2


def test_bad_distributed_options_are_input_errors(tmp_path, monkeypatch):
    _one_rank_environment(monkeypatch)
    net = build()
    options = fit_options(tmp_path, 1, batch_size=25)
    with pytest.raises(InputError, match="backend must be gloo or nccl, got 'mpi'"):
        fit(net.model, net.guide, data(), distributed=Distributed(backend="mpi"), **options)
    with pytest.raises(InputError, match="distributed must be True, False or a Distributed"):
        fit(net.model, net.guide, data(), distributed="yes", **options)


def test_the_modules_whose_buffers_are_broadcast_are_found_in_any_program():
    """Bound methods (of a module, or of an object holding modules), closures and partials."""
    import functools

    from torch import nn

    from pyro_vae.train.distributed import program_modules

    a, b, c = nn.BatchNorm1d(2), nn.Linear(2, 2), nn.Linear(2, 1)

    class Holder:
        def __init__(self):
            self.net = b

        def model(self, x):
            return self.net(x)

    def guide(x, scale):
        return c(a(x)) * scale

    found = program_modules(Holder().model, functools.partial(guide, scale=2.0))
    assert {id(m) for m in found} == {id(a), id(b), id(c)}
