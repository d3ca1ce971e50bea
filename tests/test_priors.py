"""Tests for the autoregressive priors: causality, conditioning, fitting and sampling."""

from __future__ import annotations

import pytest
import torch

from vqgen.priors import Prior, PriorConfig, build_prior, sample_from_logits

K, M = 16, 4
T = M * M
ARCHS = ["transformer", "pixelcnn"]


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)


def tiny_prior(arch: str, num_classes: int = 0, seed: int = 0, **overrides) -> Prior:
    torch.manual_seed(seed)
    settings = dict(
        arch=arch,
        codebook_size=K,
        grid_size=M,
        num_classes=num_classes,
        class_dropout=0.0,
        n_layer=2,
        n_head=2,
        n_embd=32,
        pcnn_channels=32,
        pcnn_layers=4,  # kernel 3 grows the receptive field by one row/column per layer: 4 cover 4×4
        pcnn_kernel=3,
    )
    return build_prior(PriorConfig(**{**settings, **overrides})).eval()


def random_codes(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, K, (batch, M, M), generator=torch.Generator().manual_seed(seed))


def greedy_decode(prior: Prior, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    codes = torch.zeros(n, T, dtype=torch.long)
    with torch.no_grad():
        for i in range(T):
            codes[:, i] = prior(codes.view(n, M, M), labels)[:, i].argmax(dim=-1)
    return codes.view(n, M, M)


# ---------------------------------------------------------------------------------------------- config


def test_config_roundtrip_ignores_unknown_keys() -> None:
    cfg = PriorConfig(arch="pixelcnn", codebook_size=64, num_classes=10)
    assert PriorConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg
    assert PriorConfig(arch="PixelAtt").arch == "transformer"
    with pytest.raises(ValueError):
        PriorConfig(arch="lstm")


@pytest.mark.parametrize("arch", ARCHS)
def test_default_configs_have_similar_size(arch: str) -> None:
    n_params = sum(p.numel() for p in build_prior(PriorConfig(arch=arch)).parameters())
    assert 0.8e6 <= n_params <= 1.2e6


@pytest.mark.parametrize("arch", ARCHS)
def test_param_groups_cover_every_parameter_once(arch: str) -> None:
    prior = tiny_prior(arch, num_classes=3)
    groups = prior.param_groups(weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in prior.parameters())
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for module in prior.modules():
        if isinstance(module, torch.nn.Embedding):
            assert id(module.weight) not in decayed
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert id(module.weight) in decayed
            assert module.bias is None or id(module.bias) not in decayed


# ------------------------------------------------------------------------------------------- causality


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_causal_with_no_blind_spot(arch: str, num_classes: int) -> None:
    prior = tiny_prior(arch, num_classes=num_classes)
    base = random_codes(1).view(1, T)
    # Row j + 1 of the batch perturbs raster position j only.
    batch = base.repeat(T + 1, 1)
    for j in range(T):
        batch[j + 1, j] = (batch[j + 1, j] + 1) % K
    labels = torch.full((T + 1,), 1) if num_classes else None
    with torch.no_grad():
        logits = prior(batch.view(T + 1, M, M), labels)  # (T+1, T, K)
    changed = (logits[1:] - logits[:1]).abs().amax(dim=-1) > 1e-5  # [j, i]: output i moved when code j did
    depends = changed.T  # [i, j]
    expected = torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1)  # output i depends exactly on j < i
    assert torch.equal(depends, expected), f"dependency pattern:\n{depends.int()}"


# ---------------------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("arch", ARCHS)
def test_class_conditioning(arch: str) -> None:
    prior = tiny_prior(arch, num_classes=3)
    codes = random_codes(1).expand(3, M, M)  # one grid under three labels
    with torch.no_grad():
        logits = prior(codes, torch.tensor([0, 1, 3]))
        assert (logits[0] - logits[1]).abs().amax() > 1e-4
        assert (logits[1] - logits[2]).abs().amax() > 1e-4
        # labels=None and the explicit null label (num_classes) are the same thing
        assert torch.equal(prior(codes, None), prior(codes, torch.tensor([3, 3, 3])))


@pytest.mark.parametrize("arch", ARCHS)
def test_full_class_dropout_trains_the_null_class(arch: str) -> None:
    prior = tiny_prior(arch, num_classes=3, class_dropout=1.0)
    codes, labels = random_codes(4), torch.tensor([0, 1, 2, 0])
    prior.train()
    dropped = prior.loss(codes, labels)
    prior.eval()
    assert torch.allclose(dropped, prior.loss(codes, None))
    assert not torch.allclose(dropped, prior.loss(codes, labels))


# -------------------------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("arch", ARCHS)
def test_overfits_a_few_grids(arch: str) -> None:
    # Labels make each grid fully determined, so the achievable loss is 0 (without them, telling four
    # grids apart costs log 4 nats somewhere in the sequence).
    prior = tiny_prior(arch, num_classes=4).train()
    codes, labels = random_codes(4), torch.arange(4)
    optimizer = torch.optim.Adam(prior.parameters(), lr=3e-3)
    initial = prior.loss(codes, labels).item()
    for _ in range(150):
        loss = prior.loss(codes, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert initial > 2.0
    assert loss.item() < 0.05
    prior.eval()
    # Fitted that well, greedy sampling reproduces the training grids.
    assert torch.equal(prior.sample(4, labels=labels, temperature=1e-4), codes)


# ------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_is_seeded_and_in_range(arch: str) -> None:
    prior = tiny_prior(arch)
    first = prior.sample(8, generator=torch.Generator().manual_seed(0))
    again = prior.sample(8, generator=torch.Generator().manual_seed(0))
    other = prior.sample(8, generator=torch.Generator().manual_seed(1))
    assert first.shape == (8, M, M) and first.dtype == torch.long
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.min() >= 0 and first.max() < K


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_low_temperature_and_top_k_1_are_greedy(arch: str, num_classes: int) -> None:
    prior = tiny_prior(arch, num_classes=num_classes)
    labels = torch.tensor([0, 1, 2, 3]) if num_classes else None
    greedy = greedy_decode(prior, 4, labels)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(prior.sample(4, labels=labels, temperature=1e-4, generator=gen), greedy)
    assert torch.equal(prior.sample(4, labels=labels, top_k=1, generator=gen), greedy)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_is_kept(arch: str) -> None:
    prior = tiny_prior(arch)
    prefix = random_codes(3)
    prefix_len = 6
    out = prior.sample(3, prefix=prefix, prefix_len=prefix_len, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.view(3, T)[:, :prefix_len], prefix.view(3, T)[:, :prefix_len])
    # A full-length prefix leaves nothing to sample.
    assert torch.equal(prior.sample(3, prefix=prefix, prefix_len=T), prefix)


@pytest.mark.parametrize("prefix_len", [0, 5])
def test_transformer_cache_matches_uncached(prefix_len: int) -> None:
    prior = tiny_prior("transformer", num_classes=3)
    prefix, labels = random_codes(6), torch.tensor([0, 1, 2, 3, 0, 1])

    def run(use_cache: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(123)
        return prior.sample(6, labels=labels, generator=gen, prefix=prefix, prefix_len=prefix_len, use_cache=use_cache)

    cached = run(True)
    assert torch.equal(cached, run(False))
    assert torch.equal(cached.view(6, T)[:, :prefix_len], prefix.view(6, T)[:, :prefix_len])


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_ignores_surrounding_autocast(arch: str) -> None:
    prior = tiny_prior(arch)
    expected = prior.sample(4, generator=torch.Generator().manual_seed(0))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert torch.equal(prior.sample(4, generator=torch.Generator().manual_seed(0)), expected)


def test_sample_restores_training_mode() -> None:
    prior = tiny_prior("transformer").train()
    prior.sample(1)
    assert prior.training


# ---------------------------------------------------------------------------------- sample_from_logits


def drawn_support(logits: torch.Tensor, draws: int = 2000, **kwargs) -> set[int]:
    batch = logits.expand(draws, -1)
    samples = sample_from_logits(batch, generator=torch.Generator().manual_seed(0), **kwargs)
    return set(samples.tolist())


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()[None]  # sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0
    assert drawn_support(logits, top_p=0.4) == {1}
    assert drawn_support(logits, top_p=0.75) == {1, 3}
    assert drawn_support(logits, top_p=0.9) == {1, 3, 2}
    assert drawn_support(logits, top_p=1.0) == {0, 1, 2, 3}


def test_top_k_bounds_the_support() -> None:
    logits = torch.randn(1, 32, generator=torch.Generator().manual_seed(0)) * 0.1  # nearly uniform
    top3 = set(logits[0].topk(3).indices.tolist())
    assert drawn_support(logits, top_k=3) == top3
    assert drawn_support(logits, top_k=3, top_p=0.99) <= top3


def test_tiny_temperature_and_top_k_1_give_argmax() -> None:
    logits = torch.randn(64, K, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    argmax = logits.float().argmax(dim=-1)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_from_logits(logits, temperature=1e-4, generator=gen), argmax)
    assert torch.equal(sample_from_logits(logits, temperature=1e-30, generator=gen), argmax)
    assert torch.equal(sample_from_logits(logits, top_k=1, generator=gen), argmax)
    with pytest.raises(ValueError):
        sample_from_logits(logits, temperature=0.0)


def test_class_layout_of_a_sample_grid() -> None:
    from types import SimpleNamespace

    from vqgen.errors import VQGenError
    from vqgen.sample import resolve_classes

    shapes = SimpleNamespace(num_classes=4, class_names=["circle", "square", "triangle", "star"])
    # no --class: every class, two whole rows each of the square 8×8 grid
    labels, per_row = resolve_classes(shapes, [], 64)
    assert per_row == 8 and labels.view(8, 8)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (labels.view(8, 8) == labels.view(8, 8)[:, :1]).all()
    # 64 over 10 classes cannot give whole rows of equal classes: a square grid, counts 6 or 7
    digits = SimpleNamespace(num_classes=10, class_names=None)
    labels, per_row = resolve_classes(digits, ["all"], 64)
    assert per_row == 8 and sorted(labels.bincount().tolist()) == [6] * 6 + [7] * 4
    assert resolve_classes(shapes, ["null"], 64) == (None, None)  # the literal null class
    labels, per_row = resolve_classes(shapes, ["star", "1"], 4)
    assert labels.tolist() == [3, 1, 3, 1] and per_row is None
    unconditional = SimpleNamespace(num_classes=0, class_names=None)
    assert resolve_classes(unconditional, [], 64) == (None, None)
    with pytest.raises(VQGenError, match="unconditional"):
        resolve_classes(unconditional, ["all"], 64)


def test_presets_fill_only_what_is_unset():
    from vqgen.errors import VQGenError
    from vqgen.presets import Preset, preset_for
    from vqgen.priors.training import with_size

    real = Preset()
    assert preset_for("Fashion-MNIST") == preset_for(None) == real  # every other data set: the real-data recipe
    mnist = preset_for("MNIST")  # its own stage one (issue 13's 28.5 dB), the real-data stage two
    assert (mnist.codebook_size, mnist.ae_ema_weights) == (1024, 0.999) and mnist.ae_steps > real.ae_steps
    assert mnist.transformer_width == real.transformer_width and mnist.prior_steps == real.prior_steps
    # a file or folder named after a real data set takes its preset; a longer name or the built-in shapes does not
    assert preset_for("../data/MNIST/") == preset_for("mnist-train.npz") == mnist
    assert preset_for("mnistish.npz") == preset_for("photos/shapes") == real
    assert real.prior_ema_weights > 0 and real.prior_guidance is not None
    shapes = preset_for(" Shapes ")
    assert (shapes.codebook_size, shapes.ae_hidden, shapes.transformer_width) == (64, 64, 64)
    transformer = with_size(PriorConfig(arch="transformer"), None, None, None, shapes)
    assert (transformer.n_layer, transformer.n_embd, transformer.n_head) == (4, 64, 4)
    given = with_size(PriorConfig(arch="transformer"), 2, 96, 6, shapes)  # flags win; 96 / 6 heads is valid
    assert (given.n_layer, given.n_embd, given.n_head) == (2, 96, 6)
    pixelcnn = with_size(PriorConfig(arch="pixelcnn"), None, 32, None, shapes)  # the Transformer preset is not its
    assert (pixelcnn.pcnn_layers, pixelcnn.pcnn_channels) == (PriorConfig.pcnn_layers, 32)
    with pytest.raises(VQGenError, match="divisible"):
        with_size(PriorConfig(arch="transformer"), None, 100, 8, shapes)
