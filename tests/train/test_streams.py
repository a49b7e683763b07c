"""Several data streams and auxiliary objectives in one fit, as Pyro's SS-VAE trains."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_vae.errors import InputError
from pyro_vae.train import AuxiliaryObjective, Stream, fit
from pyro_vae.train.streams import as_streams


def _still(params):
    return torch.optim.SGD(params, lr=1e-30)  # parameters held still: the objective is exact


def test_each_stream_is_scaled_to_its_own_size_and_the_auxiliary_loss_adds_its_own():
    """x ~ N(loc, 1) on a stream of 30 rows (batches of 10) and one of 8 rows (batches of 4),
    plus an auxiliary term y ~ N(0, 1) on the first stream only. With the parameters held
    still, one epoch's training objective is exactly
    [sum over both streams of log N(x; 0, 1) + sum over stream 0 of log N(y; 0, 1)] / 38."""
    gen = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(30, 2, generator=gen), torch.randn(30, generator=gen)
    x1 = torch.randn(8, 2, generator=gen)

    def model(x, y=None):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def classify(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y_aux", dist.Normal(torch.zeros(()), 1.0), obs=y)

    res = fit(
        model,
        lambda x, y=None: None,
        [Stream(data=(x0, y0), batch_size=10, name="labelled"), Stream(data=x1, batch_size=4)],
        loss=Trace_ELBO(),
        auxiliary=[AuxiliaryObjective(model=classify, guide=lambda x, y=None: None, streams=(0,))],
        optimizer=_still,
        epochs=1,
        progress=False,
    )
    normal = dist.Normal(0.0, 1.0)
    exact = (normal.log_prob(x0).sum() + normal.log_prob(x1).sum() + normal.log_prob(y0).sum()) / 38
    assert res.history[0]["train_objective"] == pytest.approx(exact.item(), rel=1e-6)
    assert res.num_steps == 5 and res.scaling == ("rescaled", "rescaled")


def test_the_schedule_interleaves_streams_in_proportion():
    streams = as_streams(
        [Stream(data=torch.zeros(30, 1), batch_size=10), Stream(data=torch.zeros(6, 1), batch_size=1)], None
    )
    schedule = streams.schedule()
    assert [s for s, _ in schedule].count(0) == 3 and [s for s, _ in schedule].count(1) == 6
    assert schedule[:3] == [(1, 0), (0, 0), (1, 1)]
    firsts = [j for s, j in schedule if s == 0]
    assert firsts == [0, 1, 2]


class SSVAE(nn.Module):
    """Pyro's SS-VAE (examples/vae/ss_vae_M2.py), small: the whole module registered in the
    model, ``pyro.plate("data")`` without a size, the label observed where given and sampled by
    the guide where not, and a classifier loss on labelled batches."""

    def __init__(self, d=6, classes=2, z=2, hidden=8, aux=20.0):
        super().__init__()
        self.classes, self.z_dim, self.aux = classes, z, aux
        self.encoder_y = nn.Sequential(
            nn.Linear(d, hidden), nn.Softplus(), nn.Linear(hidden, classes), nn.Softmax(-1)
        )
        self.encoder_z = nn.Sequential(
            nn.Linear(d + classes, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z + classes, hidden), nn.Softplus(), nn.Linear(hidden, d), nn.Sigmoid()
        )

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        n = xs.size(0)
        with pyro.plate("data"):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(n, self.z_dim), 1.0).to_event(1))
            alpha = xs.new_ones(n, self.classes) / self.classes
            ys = pyro.sample("y", dist.OneHotCategorical(alpha), obs=ys)
            loc = self.decoder(torch.cat([zs, ys], -1))
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            out = self.encoder_z(torch.cat([xs, ys], -1))
            loc, scale = out[..., : self.z_dim], nn.functional.softplus(out[..., self.z_dim :]) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                with pyro.poutine.scale(scale=self.aux):
                    pyro.sample("y_aux", dist.OneHotCategorical(self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass


def _two_classes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 2, (n,), generator=gen)
    probs = torch.where(label[:, None] == 1, 0.85, 0.15).expand(n, 6)
    return torch.bernoulli(probs, generator=gen), nn.functional.one_hot(label, 2).float()


def test_pyros_ss_vae_trains_with_streams_and_an_auxiliary_loss():
    """The example's own program and training scheme, through fit: a labelled stream with the
    classifier loss and an unlabelled stream. The classifier learns the labels of held-out
    data (more than 90% right, against 50% by chance)."""
    torch.manual_seed(0)
    ss = SSVAE()
    x_l, y_l = _two_classes(20, 1)
    x_u, _ = _two_classes(200, 2)
    x_t, y_t = _two_classes(200, 3)
    res = fit(
        ss.model,
        ss.guide,
        [Stream(data=(x_l, y_l), batch_size=10, name="labelled"), Stream(data=x_u, batch_size=50)],
        loss=Trace_ELBO(),
        auxiliary=[AuxiliaryObjective(model=ss.model_classify, guide=ss.guide_classify, streams=(0,))],
        lr=0.01,
        epochs=40,
        progress=False,
    )
    accuracy = (ss.encoder_y(x_t).argmax(-1) == y_t.argmax(-1)).float().mean().item()
    print(f"SS-VAE held-out accuracy {accuracy:.3f}")
    assert accuracy > 0.9
    assert res.scaling == ("rescaled", "rescaled")


def test_streams_are_checked_before_work():
    with pytest.raises(InputError, match="names stream 3"):
        fit(
            lambda x: None,
            lambda x: None,
            [Stream(data=torch.zeros(4, 2))],
            auxiliary=[AuxiliaryObjective(model=lambda x: None, guide=lambda x: None, streams=(3,))],
            progress=False,
        )
    with pytest.raises(InputError, match="different feature shapes"):
        as_streams([Stream(data=torch.zeros(4, 2)), Stream(data=torch.zeros(4, 3))], None)
