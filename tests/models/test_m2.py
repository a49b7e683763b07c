import pytest
import torch
from pyro import poutine

from pyro_vae.bounds import elbo
from pyro_vae.data import hide_labels
from pyro_vae.errors import InputError
from pyro_vae.estimators import ScoreFunctionELBO
from pyro_vae.likelihoods import Bernoulli
from pyro_vae.models import M2


def _m2(alpha: float = 1.0) -> M2:
    torch.manual_seed(0)
    return M2(
        Bernoulli(6), num_classes=3, latent_dim=2, hidden=(8,), classifier_hidden=(8,), alpha=alpha
    ).double()


def _data():
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 6, generator=gen) < 0.5).double()
    return x, torch.tensor([0, -1, 2, -1, 1])


def test_labelled_rows_observe_y_and_unlabelled_rows_infer_it():
    m2 = _m2()
    x, y = _data()
    guide = poutine.trace(m2.guide).get_trace(x, y)
    model = poutine.trace(poutine.replay(m2.model, trace=guide)).get_trace(x, y)
    labelled = y >= 0
    assert torch.equal(guide.nodes["y_latent"]["mask"], ~labelled)
    assert torch.equal(model.nodes["y_observed"]["mask"], labelled)
    assert model.nodes["y_observed"]["is_observed"] and not model.nodes["y_latent"]["is_observed"]
    assert (
        model.nodes["y_classified"]["infer"]["auxiliary_term"] and model.nodes["y_classified"]["scale"] == 1.0
    )


def test_classification_term_is_trained_but_not_evaluated():
    """The auxiliary alpha * log q(y|x) enters the training objective, not the bound of log p(x, y)."""
    x, y = _data()
    labelled_only = (x[y >= 0], y[y >= 0])  # no discrete latent: the losses are deterministic given z
    with_term, without = _m2(alpha=2.0), _m2(alpha=0.0)
    bounds = []
    for m in (with_term, without):
        torch.manual_seed(1)
        bounds.append(elbo(m.model, m.guide, *labelled_only, num_particles=3))
    torch.testing.assert_close(bounds[0], bounds[1])
    torch.manual_seed(1)
    loss_with = ScoreFunctionELBO().loss(with_term.model, with_term.guide, *labelled_only)
    torch.manual_seed(1)
    loss_without = ScoreFunctionELBO().loss(without.model, without.guide, *labelled_only)
    log_q = with_term.classifier(labelled_only[0]).log_softmax(-1)[torch.arange(3), labelled_only[1]]
    torch.testing.assert_close(loss_without - loss_with, (2.0 * log_q).sum().item())


def test_validate_data_and_hide_labels():
    m2 = _m2()
    x, y = _data()
    m2.validate_data(x, y)
    with pytest.raises(InputError, match=r"out of range at rows \[1\]"):
        m2.validate_data(x, torch.tensor([0, 3, 1, 1, 1]))
    with pytest.raises(InputError, match="integers"):
        m2.validate_data(x, y.double())
    labels = torch.arange(30) % 3
    hidden = hide_labels(labels, 6, num_classes=3, seed=0)
    assert (hidden >= 0).sum() == 6 and torch.equal(
        torch.bincount(hidden[hidden >= 0]), torch.tensor([2, 2, 2])
    )
    assert torch.equal(hidden[hidden >= 0], labels[hidden >= 0])
    with pytest.raises(InputError, match="multiple"):
        hide_labels(labels, 7, num_classes=3)
    with pytest.raises(InputError, match="fewer"):
        hide_labels(labels, 60, num_classes=3)
