import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae.errors import InputError
from pyro_vae.likelihoods import Bernoulli, Gaussian
from pyro_vae.models import BernoulliLatent, CategoricalLatent, DiscreteVAE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_categorical_code_shapes_prior_and_dtype(dtype):
    vae = DiscreteVAE(Bernoulli(5), CategoricalLatent(4, 3), hidden=(8,)).to(dtype)
    x = (torch.rand(6, 5) < 0.5).to(dtype)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    z = guide.nodes["z"]["value"]
    assert z.shape == (6, 4, 3) and z.dtype == dtype and torch.equal(z.sum(-1), torch.ones(6, 4, dtype=dtype))
    assert not guide.nodes["z"]["fn"].has_rsample
    prior = model.nodes["z"]["fn"].log_prob(z)
    torch.testing.assert_close(prior, torch.full((6,), -4 * math.log(3), dtype=dtype))
    assert model.nodes["x"]["fn"].event_shape == (5,)


def test_bernoulli_code_prior():
    vae = DiscreteVAE(Bernoulli(5), BernoulliLatent(7, prior_prob=0.2), hidden=(8,))
    z = torch.tensor([[1.0, 0, 0, 0, 0, 0, 1]])
    lp = vae.latent.prior(z).log_prob(z)
    torch.testing.assert_close(lp, torch.tensor([2 * math.log(0.2) + 5 * math.log(0.8)]))
    assert vae.encode(torch.zeros(3, 5)).shape == (3, 7)
    assert vae.sample_prior(4).shape == (4, 5)
    assert vae.reconstruct(torch.zeros(3, 5)).shape == (3, 5)


def test_one_hot_encode_and_relaxed_decoder_inputs():
    vae = DiscreteVAE(Gaussian(5), CategoricalLatent(2, 4), hidden=(8,))
    code = vae.encode(torch.randn(3, 5))
    assert code.shape == (3, 2, 4) and torch.equal(code.sum(-1), torch.ones(3, 2))
    soft = torch.softmax(torch.randn(3, 2, 4), -1)  # the decoder takes relaxed values too
    assert vae.decoder(vae.latent.flatten(soft)).shape == (3, vae.likelihood.num_outputs)


def test_bad_construction_and_data():
    with pytest.raises(InputError, match="latent must be"):
        DiscreteVAE(Bernoulli(5), 3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="num_categories"):
        CategoricalLatent(3, 1)
    with pytest.raises(InputError, match="prior_prob"):
        BernoulliLatent(3, prior_prob=1.0)
    vae = DiscreteVAE(Bernoulli(5), BernoulliLatent(3), hidden=(8,))
    with pytest.raises(InputError, match="4 features"):
        vae.validate_data(torch.zeros(2, 4))
    with pytest.raises(InputError, match="row"):
        vae.validate_data(torch.full((2, 5), 0.5))
    with pytest.raises(InputError, match=r"shape \(\.\.\., 2, 4\)"):
        CategoricalLatent(2, 4).flatten(torch.zeros(3, 8))


def test_two_models_do_not_share_parameters():
    a = DiscreteVAE(Bernoulli(5), BernoulliLatent(3), hidden=(8,), name="a")
    b = DiscreteVAE(Bernoulli(5), BernoulliLatent(3), hidden=(8,), name="b")
    x = torch.zeros(2, 5)
    for vae in (a, b):
        poutine.trace(vae.guide).get_trace(x)
        poutine.trace(vae.model).get_trace(x)
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("a_") for n in names) and any(n.startswith("b_") for n in names)
