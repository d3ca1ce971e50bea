"""Classifier-free guidance and the label-frequency way of sampling without naming a class."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vqgen.priors import guided_logits

from test_priors import ARCHS, K, T, random_codes, tiny_prior

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)

CLASSES = 3


def guided_prior(arch: str):
    # class_dropout > 0 so that the null class is a real one; eval mode, so nothing in sampling depends on it
    prior = tiny_prior(arch, num_classes=CLASSES, class_dropout=0.1)
    # random weights give near-uniform logits; scale the head so the classes differ and guidance matters
    with torch.no_grad():
        for p in prior.parameters():
            p.mul_(3.0)
    return prior


def draw(prior, labels, seed=7, **kwargs):
    return prior.sample(
        len(labels) if labels is not None else 6, labels=labels, generator=torch.Generator().manual_seed(seed), **kwargs
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_guidance_one_is_conditional_and_zero_is_null(arch: str) -> None:
    prior = guided_prior(arch)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    null = torch.full_like(labels, CLASSES)
    conditional = draw(prior, labels)
    # the batched 2n path (conditional and null rows in one forward pass), not a shortcut around it
    assert torch.equal(draw(prior, labels, guidance=1.0), conditional)
    assert torch.equal(draw(prior, labels, guidance=0.0), draw(prior, null))
    guided = draw(prior, labels, guidance=3.0)
    assert not torch.equal(guided, conditional)  # a scale that is neither 0 nor 1 changes the samples
    assert guided.min() >= 0 and guided.max() < K


@pytest.mark.parametrize("prefix_len", [0, 5])
def test_guided_cache_matches_uncached(prefix_len: int) -> None:
    prior = guided_prior("transformer")
    labels, prefix = torch.tensor([0, 1, 2, 1]), random_codes(4)
    kwargs = dict(guidance=2.0, prefix=prefix, prefix_len=prefix_len)
    cached = draw(prior, labels, use_cache=True, **kwargs)
    assert torch.equal(cached, draw(prior, labels, use_cache=False, **kwargs))
    assert torch.equal(cached.view(4, T)[:, :prefix_len], prefix.view(4, T)[:, :prefix_len])


def test_guided_logits_formula() -> None:
    cond, null = torch.randn(4, K), torch.randn(4, K)
    both = torch.cat([cond, null])
    assert torch.allclose(guided_logits(both, 1.5), null + 1.5 * (cond - null), atol=1e-6)
    assert torch.equal(guided_logits(both, 1.0), cond) and torch.equal(guided_logits(both, 0.0), null)


def test_guidance_sharpens_towards_the_class() -> None:
    """Guidance above 1 raises the probability of what the class adds over the null class."""
    cond = torch.tensor([[2.0, 0.0, 0.0]])
    null = torch.tensor([[0.0, 0.0, 1.0]])
    probs = [guided_logits(torch.cat([cond, null]), s).softmax(-1)[0, 0] for s in (0.0, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(probs, probs[1:], strict=False))


def test_guidance_needs_a_conditional_model() -> None:
    with pytest.raises(ValueError, match="class-conditional"):
        tiny_prior("transformer").sample(2, guidance=2.0)
    with pytest.raises(ValueError, match=">= 0"):
        guided_prior("transformer").sample(2, labels=torch.tensor([0, 1]), guidance=-1.0)


def fake_pipeline(counts):
    from vqgen.sample import Pipeline

    prior = SimpleNamespace(cfg=SimpleNamespace(num_classes=len(counts), class_dropout=0.1))
    config = {"codes": {"class_counts": counts}, "sampling": {"guidance": 1.5}}
    return Pipeline(prior, None, config, torch.device("cpu"), None, None)


def test_label_frequency_sampling_follows_the_training_labels() -> None:
    from vqgen.sample import resolve_classes, resolve_guidance

    counts = [600, 300, 100]
    pipe = fake_pipeline(counts)
    labels, per_row = resolve_classes(pipe, ["none"], 6000, seed=3)
    assert per_row is None and labels.shape == (6000,)
    observed = torch.bincount(labels, minlength=3).double()
    expected = torch.tensor(counts, dtype=torch.float64) / sum(counts) * 6000
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # the 0.999 quantile of chi-square with 2 degrees of freedom
    assert torch.equal(resolve_classes(pipe, ["none"], 6000, seed=3)[0], labels)  # the seed reproduces
    assert resolve_classes(pipe, ["null"], 64) == (None, None)
    # the recorded scale guides labelled samples and never the null class
    assert resolve_guidance(pipe, None, labelled=True) == 1.5
    assert resolve_guidance(pipe, None, labelled=False) is None
    assert resolve_guidance(pipe, 1.0, labelled=True) is None  # plain conditional sampling


def test_guidance_errors() -> None:
    from vqgen.errors import VQGenError
    from vqgen.sample import Pipeline, SamplingOptions, resolve_guidance

    unconditional = Pipeline(
        SimpleNamespace(cfg=SimpleNamespace(num_classes=0, class_dropout=0.1)), None, {}, torch.device("cpu"), None
    )
    with pytest.raises(VQGenError, match="unconditional"):
        resolve_guidance(unconditional, 2.0, labelled=False)
    no_null = Pipeline(
        SimpleNamespace(cfg=SimpleNamespace(num_classes=3, class_dropout=0.0)), None, {}, torch.device("cpu"), None
    )
    with pytest.raises(VQGenError, match="class_dropout 0"):
        resolve_guidance(no_null, 2.0, labelled=True)
    assert resolve_guidance(no_null, None, labelled=True) is None
    with pytest.raises(VQGenError, match="null"):
        resolve_guidance(fake_pipeline([1, 1]), 2.0, labelled=False)
    with pytest.raises(VQGenError, match="guidance must"):
        SamplingOptions(guidance=-0.5).validate(K)
