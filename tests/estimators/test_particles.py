import pyro.distributions as dist
import pytest
import torch

from pyro_vae.infer.particles import gumbel_max_sample


@pytest.mark.parametrize("one_hot", [True, False])
def test_gumbel_max_draws_are_categorical(one_hot):
    logits = torch.tensor([[0.5, -1.0, 1.5, 0.0], [2.0, 0.0, 0.0, -3.0]], dtype=torch.float64)
    n = 20_000
    cls = dist.OneHotCategorical if one_hot else dist.Categorical
    fn = cls(logits=logits).expand((n, 2)).to_event(1)  # as a particle plate expands it
    value = gumbel_max_sample(fn)
    index = value.argmax(-1) if one_hot else value
    assert index.shape == (n, 2)
    p = logits.softmax(-1)
    for row in range(2):
        freq = torch.bincount(index[:, row], minlength=4) / n
        z = (freq - p[row]) / (p[row] * (1 - p[row]) / n).sqrt()
        assert z.abs().max() < 4, z
    if one_hot:
        assert torch.equal(value.sum(-1), torch.ones(n, 2, dtype=torch.float64))


def test_other_distributions_are_left_to_their_own_sampler():
    assert gumbel_max_sample(dist.Bernoulli(torch.tensor([0.3]))) is None
