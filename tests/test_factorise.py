"""Factorised codes: sub-token priors are exact, renumbering and grouping are bijections, sampling agrees with
itself, and an inconsistent factorisation is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vqgen.factorise import balanced_order, check_factors, fsq_factor_groups, join_codes, parse_factors, split_codes
from vqgen.vqvae import VQVAE, AEConfig

from conftest import run_cli
from test_priors import ARCHS, M, T, random_codes, tiny_prior

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)

FACTORS = [4, 4]  # K = 16, as test_priors' tiny priors


def test_split_and_join_are_inverse_in_mixed_radix():
    factors = [3, 5, 2]
    codes = torch.arange(30)
    digits = split_codes(codes, factors)
    assert digits[0].tolist()[:11] == [0] * 10 + [1]  # the first sub-token is the most significant
    assert torch.equal(join_codes(digits, factors), codes)
    assert (
        parse_factors("128x128") == [128, 128] and parse_factors("8,4,2") == [8, 4, 2] and parse_factors("none") == []
    )
    with pytest.raises(ValueError, match="multiply"):
        check_factors([4, 5], 16)
    with pytest.raises(ValueError, match="each ≥ 2"):
        check_factors([16, 1], 16)
    with pytest.raises(ValueError):
        parse_factors("12x-")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_factorised_prior_is_an_exact_distribution_over_all_codes(arch: str, num_classes: int):
    prior = tiny_prior(arch, num_classes=num_classes, factors=FACTORS)
    codes = random_codes(3)
    labels = torch.tensor([0, 1, 2]) if num_classes else None
    with torch.no_grad():
        logp = prior(codes, labels)  # (3, T, K) by enumeration of the sub-tokens
        hidden = prior._outputs(codes, prior.resolve_labels(labels, 3, codes.device), None)  # (3, T, C)
        nll = prior(codes, labels, nll=True)
    assert logp.shape == (3, T, 16)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3, T), atol=1e-5)
    # log p(c) = log p(a) + log p(b | a), each from its own head
    head = prior.subtokens
    h = hidden.reshape(-1, hidden.size(-1))
    a, b = split_codes(codes.reshape(-1), FACTORS)
    log_a = head.out[0](h).log_softmax(-1).gather(1, a[:, None]).squeeze(1)
    log_b = head.out[1](head._advance(h, 0, a)).log_softmax(-1).gather(1, b[:, None]).squeeze(1)
    picked = logp.reshape(-1, 16).gather(1, codes.reshape(-1, 1)).squeeze(1)
    assert torch.allclose(picked, log_a + log_b, atol=1e-5)
    assert nll.item() == pytest.approx(-picked.mean().item(), abs=1e-5)  # held-out bits are exact


@pytest.mark.parametrize("arch", ARCHS)
def test_factorised_prior_stays_causal(arch: str):
    prior = tiny_prior(arch, factors=FACTORS)
    base = random_codes(1).view(1, T)
    batch = base.repeat(T + 1, 1)
    for j in range(T):
        batch[j + 1, j] = (batch[j + 1, j] + 1) % 16
    with torch.no_grad():
        logp = prior(batch.view(T + 1, M, M))
    changed = (logp[1:] - logp[:1]).abs().amax(-1) > 1e-5  # [j, i]
    assert not changed.tril().any()  # output i never moves with code j ≥ i
    assert changed.triu(1).any()


@pytest.mark.parametrize("arch", ARCHS)
def test_flat_prior_loss_is_the_k_way_cross_entropy(arch: str):
    prior = tiny_prior(arch)
    codes = random_codes(2)
    with torch.no_grad():
        logits = prior(codes)
        expected = F.cross_entropy(logits.reshape(-1, 16), codes.reshape(-1))
        assert torch.equal(prior(codes, nll=True), expected)
    names = set(prior.state_dict())
    assert not any(n.startswith("subtokens.") for n in names)  # a flat prior keeps the layout of older run folders
    assert ("head.weight" if arch == "transformer" else "head.3.weight") in names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("guidance", [None, 2.0])
def test_cached_sampling_equals_uncached_with_factorised_codes(arch: str, guidance: float | None):
    prior = tiny_prior(arch, num_classes=3, class_dropout=0.1, factors=FACTORS)
    labels = torch.tensor([0, 1, 2, 1])

    def draw(use_cache: bool, seed: int = 5) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return prior.sample(
            4, labels=labels, generator=generator, use_cache=use_cache, guidance=guidance, top_k=3, top_p=0.9
        )

    cached = draw(True)
    assert torch.equal(cached, draw(False))
    assert torch.equal(cached, draw(True))  # a fixed seed reproduces
    assert not torch.equal(cached, draw(True, seed=6))
    assert cached.min() >= 0 and cached.max() < 16


def test_top_k_one_picks_the_most_likely_sub_token_at_each_step():
    prior = tiny_prior("transformer", factors=FACTORS)
    with torch.no_grad():
        code = prior.sample(1, top_k=1, generator=torch.Generator().manual_seed(0))[0, 0, 0]
        start = prior._outputs(torch.zeros(1, M, M, dtype=torch.long), prior.resolve_labels(None, 1, "cpu"), None)
        h = start[:, 0]
        a = prior.subtokens.out[0](h).argmax(-1)
        b = prior.subtokens.out[1](prior.subtokens._advance(h, 0, a)).argmax(-1)
    assert int(code) == int(a) * 4 + int(b)


def _patch_nats(prior, grids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−log p of each position's patch (N, positions), from the network's outputs and the sub-token head."""
    tokens = prior.to_positions(grids)  # (N, m/2, m/2)
    hidden = prior._outputs(tokens, labels, None)
    return prior.subtokens.nll(hidden.reshape(-1, hidden.size(-1)), tokens.reshape(-1)).view(len(grids), -1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("k", "factors"), [(3, []), (4, [2, 2])])
def test_patched_prior_is_an_exact_distribution_over_every_patch(arch: str, k: int, factors: list[int]):
    # a 2×2 grid is one patch: all K⁴ of them (81 and 256), their probabilities summing to one
    prior = tiny_prior(arch, num_classes=3, codebook_size=k, grid_size=2, factors=factors, patch=2)
    grids = torch.cartesian_prod(*[torch.arange(k)] * 4).view(-1, 2, 2)  # (K⁴, 2, 2)
    labels = torch.full((len(grids),), 1)
    with torch.no_grad():
        nats = _patch_nats(prior, grids, labels)[:, 0]
        mean = prior(grids, labels, nll=True)
    assert prior.cfg.token_factors == (factors or [k]) * 4
    assert float(torch.logsumexp(-nats.double(), 0)) == pytest.approx(0.0, abs=1e-5)
    assert float(mean) == pytest.approx(float(nats.mean()) / 4, rel=1e-5)  # nats per code, not per patch


@pytest.mark.parametrize("arch", ARCHS)
def test_a_patched_prior_reads_only_earlier_patches(arch: str):
    prior = tiny_prior(arch, patch=2)  # 4×4 codes as 2×2 positions
    base = random_codes(1)
    batch = base.repeat(M * M + 1, 1, 1)
    for j in range(M * M):
        batch[j + 1].view(-1)[j] = (batch[j + 1].view(-1)[j] + 1) % prior.cfg.codebook_size
    with torch.no_grad():
        nats = _patch_nats(prior, batch, prior.resolve_labels(None, len(batch), "cpu"))  # (17, 4)
    position = torch.tensor([(j // M) // 2 * 2 + (j % M) // 2 for j in range(M * M)])  # the patch of code j
    changed = (nats[1:] - nats[:1]).abs() > 1e-6  # [j, patch]
    earlier = torch.arange(4)[None, :] < position[:, None]  # [j, patch]: the patch comes before code j's
    assert not changed[earlier].any()  # an earlier patch never moves with a later code
    assert changed[torch.arange(M * M), position].all()  # its own patch always does
    assert changed[position == 0][:, 1:].any()  # later patches read earlier ones


@pytest.mark.parametrize("arch", ARCHS)
def test_a_patched_prior_samples_as_it_scores_and_keeps_whole_rows_of_patches(arch: str):
    prior = tiny_prior(arch, num_classes=3, patch=2)
    codes = random_codes(4)
    tokens = prior.to_positions(codes)
    assert tokens.shape == (4, M // 2, M // 2) and torch.equal(prior.from_positions(tokens), codes)
    k = prior.cfg.codebook_size  # a patch's codes in row order, the first most significant
    assert torch.equal(
        tokens[:, 0, 1], ((codes[:, 0, 2] * k + codes[:, 0, 3]) * k + codes[:, 1, 2]) * k + codes[:, 1, 3]
    )
    labels = torch.tensor([0, 1, 2, 1])

    def draw(use_cache: bool = True, seed: int = 5, **kept) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return prior.sample(4, labels=labels, generator=generator, use_cache=use_cache, guidance=2.0, top_k=5, **kept)

    sampled = draw()
    assert sampled.shape == (4, M, M) and torch.equal(sampled, draw(use_cache=False))
    assert not torch.equal(sampled, draw(seed=6))
    completed = draw(prefix=codes, prefix_len=2 * M)
    assert torch.equal(completed[:, :2], codes[:, :2]) and torch.equal(
        completed, draw(False, prefix=codes, prefix_len=2 * M)
    )
    with pytest.raises(ValueError, match="whole rows of patches"):
        draw(prefix=codes, prefix_len=M)


def test_a_patch_must_divide_the_grid_and_fit_one_number():
    with pytest.raises(ValueError, match="divides the grid side 4"):
        tiny_prior("transformer", patch=3)
    with pytest.raises(ValueError, match="64-bit"):
        tiny_prior("transformer", codebook_size=1 << 16, patch=2)
    with pytest.raises(ValueError, match="context"):
        tiny_prior("transformer", context_grid=2, patch=2)


def tiny_ae(**overrides) -> VQVAE:
    torch.manual_seed(0)
    cfg = dict(image_size=16, channels=3, hidden=16, res_hidden=8, embed_dim=8, codebook_size=16, kmeans_init=False)
    return VQVAE(AEConfig(**{**cfg, **overrides})).eval()


@pytest.mark.parametrize(
    "levels,kind", [(1, {}), (2, {}), (1, {"quantizer": "fsq", "fsq_levels": [4, 2, 2], "factor_by": "kmeans"})]
)
def test_renumbering_a_codebook_is_a_bijection_that_keeps_the_images(levels: int, kind: dict):
    flat = tiny_ae(levels=levels, **{k: v for k, v in kind.items() if k != "factor_by"})
    renumbered = tiny_ae(levels=levels, code_factors=FACTORS, **kind)
    renumbered.load_state_dict(flat.state_dict(), strict=False)
    renumbered.renumber_codes()
    for order in renumbered.code_order:
        assert sorted(order.tolist()) == list(range(16))
        assert not torch.equal(order, torch.arange(16))  # the codes really were renumbered
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    flat_codes = flat.encode_levels(x)
    codes = renumbered.encode_levels(x)
    for level, (own, new) in enumerate(zip(flat_codes, codes, strict=True)):
        assert torch.equal(renumbered.code_order[level][new], own)  # join(factorise(c)) = c
    assert torch.equal(renumbered.decode_levels(codes), flat.decode_levels(flat_codes))


def test_balanced_renumbering_groups_near_codes_and_is_deterministic():
    # four well-separated clusters of four codes: the first sub-token must be the cluster
    centres = torch.tensor([[10.0, 0], [-10, 0], [0, 10], [0, -10]])
    codebook = (centres[:, None, :] + 0.1 * torch.randn(4, 4, 2, generator=torch.Generator().manual_seed(1))).reshape(
        16, 2
    )
    order = balanced_order(codebook[torch.randperm(16, generator=torch.Generator().manual_seed(2))], FACTORS)
    shuffled = codebook[torch.randperm(16, generator=torch.Generator().manual_seed(2))]
    clusters = shuffled[order].view(4, 4, 2)  # codes by their new first sub-token
    assert (clusters.std(dim=1).amax() < 1).item()
    rng = torch.get_rng_state()
    assert torch.equal(balanced_order(shuffled, FACTORS), order)
    assert torch.equal(torch.get_rng_state(), rng)  # a resumed run stays bit-identical


def test_fsq_factorises_by_groups_of_levels():
    assert fsq_factor_groups([8, 8, 8, 6, 5], [240, 64]) == [[8, 6, 5], [8, 8]]
    assert fsq_factor_groups([8, 8, 8, 6, 5], [64, 240]) is None
    with pytest.raises(ValueError, match="groups of levels"):
        AEConfig(quantizer="fsq", fsq_levels=[8, 8, 8, 6, 5], code_factors=[64, 240])
    ae = tiny_ae(quantizer="fsq", fsq_levels=[4, 2, 2], code_factors=[4, 4])
    assert not hasattr(ae, "code_order")  # fsq's own index is the factorised one
    with pytest.raises(ValueError, match="two sub-tokens"):
        AEConfig(codebook_size=16, code_factors=[2, 2, 4])
    with pytest.raises(ValueError, match="only fsq"):
        AEConfig(codebook_size=16, code_factors=[4, 4], factor_by="levels")
    # fsq's grid of codes renumbered like a learnt codebook: any two factors of K, not only groups of levels
    renumbered_fsq = tiny_ae(quantizer="fsq", fsq_levels=[4, 2, 2], code_factors=[2, 8], factor_by="kmeans")
    assert hasattr(renumbered_fsq, "code_order")


def test_factorised_pipeline_end_to_end_on_shapes(in_tmp):
    small = ("--hidden", "32", "--embed-dim", "16", "--codebook-size", "64", "--batch-size", "16")
    bad = run_cli("train-ae", "--steps", "2", *small, "--code-factors", "8x4")
    assert bad.code != 0 and "multiply" in bad.err and "Traceback" not in bad.err
    result = run_cli("train-ae", "--steps", "6", *small, "--code-factors", "8x8")
    assert result.code == 0, result.err
    assert json.loads((in_tmp / "runs/ae/config.json").read_text())["model"]["code_factors"] == [8, 8]
    assert run_cli("encode").code == 0
    from vqgen.codes import load_codes

    assert load_codes(in_tmp / "runs/codes.safetensors").factors == [8, 8]
    flags = ("--steps", "4", "--batch-size", "16", "--layers", "1", "--width", "32", "--eval-every", "0")
    result = run_cli("train-prior", *flags)
    assert result.code == 0, result.err
    assert json.loads((in_tmp / "runs/prior/config.json").read_text())["model"]["factors"] == [8, 8]
    result = run_cli("sample", "--n", "4", "--top-k", "5", "--temperature", "0.9")
    assert result.code == 0, result.err
    result = run_cli("complete", "--image", "samples/000.png", "--keep-rows", "3", "--n", "2")
    assert result.code == 0, result.err
    # eval's held-out bits are the prior's own: eval numbers the codes as encode numbers them
    evaluated = run_cli(
        "eval",
        "--prior",
        "runs/prior",
        "--n",
        "8",
        "--train-limit",
        "200",
        "--classifier-steps",
        "2",
        "--two-sample-steps",
        "20",
    )
    assert evaluated.code == 0, evaluated.err
    final = [json.loads(line) for line in (in_tmp / "runs/prior/metrics.jsonl").read_text().splitlines()][-1]
    report = json.loads((in_tmp / "runs/prior/eval.json").read_text())
    assert report["likelihood"]["bits_per_code"] == pytest.approx(final["bits_per_code"], rel=1e-5)

    # a flat prior over the same codes, and another factorisation of the same autoencoder
    result = run_cli("train-prior", *flags, "--flat", "--out", "runs/prior-flat", "--arch", "pixelcnn")
    assert result.code == 0, result.err
    assert json.loads((in_tmp / "runs/prior-flat/config.json").read_text())["model"]["factors"] == []
    assert run_cli("sample", "--n", "2", "--prior", "runs/prior-flat").code == 0
    # 2×2 patches of the 8×8 grid: 4×4 positions of eight sub-tokens each
    result = run_cli("train-prior", *flags, "--patch", "2", "--out", "runs/prior-patch")
    assert result.code == 0, result.err
    assert json.loads((in_tmp / "runs/prior-patch/config.json").read_text())["model"]["patch"] == 2
    assert run_cli("sample", "--n", "2", "--prior", "runs/prior-patch").code == 0
    odd = run_cli("complete", "--prior", "runs/prior-patch", "--image", "samples/000.png", "--keep-rows", "3")
    assert odd.code != 0 and "multiple of 2" in odd.err and "Traceback" not in odd.err
    assert (
        run_cli("complete", "--prior", "runs/prior-patch", "--image", "samples/000.png", "--keep-rows", "2").code == 0
    )
    assert run_cli("complete", "--prior", "runs/prior-patch", "--image", "samples/000.png").code == 0  # 4 rows
    other = run_cli("train-prior", "--resume", "--out", "runs/prior-patch", "--patch", "1", "--steps", "6")
    assert other.code != 0 and "2×2 patches" in other.err and "Traceback" not in other.err
    bad = run_cli("train-prior", *flags, "--patch", "3", "--out", "runs/prior-patch3")
    assert bad.code != 0 and "--patch must" in bad.err and "Traceback" not in bad.err
    result = run_cli("factorise", "--ae", "runs/ae", "--factors", "16x4", "--out", "runs/ae-16x4")
    assert result.code == 0, result.err
    mismatch = run_cli("sample", "--n", "2", "--ae", "runs/ae-16x4", "--ignore-hash")
    assert mismatch.code != 0 and "sub-tokens" in mismatch.err and "Traceback" not in mismatch.err
    assert run_cli("encode", "--ae", "runs/ae-16x4", "--out", "runs/codes-16x4.safetensors").code == 0
    other = run_cli("train-prior", "--resume", "--codes", "runs/codes-16x4.safetensors", "--steps", "6")
    assert other.code != 0 and "factorises" in other.err and "Traceback" not in other.err
