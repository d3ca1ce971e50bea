import math

import pytest
import torch

from vqgen.quantize import FSQ, EMAQuantizer, SimVQ, VectorQuantizer, kmeans, nearest_code, rotation_trick


@pytest.mark.parametrize("n,k", [(300, 50), (1000, 8192)])  # 8192 codes: the scores come in blocks of 256 rows
def test_nearest_code_equals_brute_force(n, k):
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(n, 16, generator=g), torch.randn(k, 16, generator=g)
    brute = torch.cdist(z.double(), codebook.double()).argmin(1)
    assert torch.equal(nearest_code(z, codebook), brute)


@pytest.mark.parametrize("kind", ["vq", "ema", "simvq"])
def test_straight_through_passes_decoder_gradient_unchanged(kind):
    torch.manual_seed(0)
    cls = {"vq": VectorQuantizer, "ema": EMAQuantizer, "simvq": SimVQ}[kind]
    quantizer = cls(32, 8).eval()  # eval: no EMA update between the forward and the lookup below
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = quantizer(z)
    upstream = torch.randn_like(z)
    (out.quantized * upstream).sum().backward()  # the decoder's gradient only, no auxiliary loss
    assert torch.allclose(z.grad, upstream)
    # and the forward value is the codebook vector of the chosen index
    assert torch.allclose(out.quantized.detach(), quantizer.lookup(out.indices), atol=1e-6)


def test_rotation_trick_forward_is_q_and_gradient_is_rotated():
    torch.manual_seed(0)
    z = torch.randn(5, 4, requires_grad=True)
    q = torch.randn(5, 4)
    out = rotation_trick(z, q)
    assert torch.allclose(out, q, atol=1e-5)
    g = torch.randn(5, 4)
    (out * g).sum().backward()
    # the Jacobian is (‖q‖/‖z‖)·R with R orthogonal: gradient norms scale by ‖q‖/‖z‖
    ratio = q.norm(dim=1) / z.detach().norm(dim=1)
    assert torch.allclose(z.grad.norm(dim=1), ratio * g.norm(dim=1), atol=1e-5)
    assert not torch.allclose(z.grad, g)
    # parallel z and q: R is the identity, the gradient is only rescaled
    z2 = torch.tensor([[1.0, 2.0]], requires_grad=True)
    (rotation_trick(z2, 3 * z2.detach()) * torch.tensor([[0.5, -1.0]])).sum().backward()
    assert torch.allclose(z2.grad, 3 * torch.tensor([[0.5, -1.0]]), atol=1e-5)


def test_ema_step_matches_hand_computed_formula():
    q = EMAQuantizer(2, 1, decay=0.5, eps=0.1)
    q.set_codes(torch.arange(2), torch.tensor([[0.0], [10.0]]))  # counts 1, sums = codebook
    z = torch.tensor([1.0, 2.0, 9.0]).view(1, 1, 1, 3)  # (B, D, H, W): codes 0, 0, 1
    out = q(z)
    assert out.indices.flatten().tolist() == [0, 0, 1]
    # counts: 0.5·1 + 0.5·2 = 1.5 and 0.5·1 + 0.5·1 = 1.0; sums: 0.5·0 + 0.5·3 = 1.5 and 0.5·10 + 0.5·9 = 9.5
    assert torch.allclose(q.ema_count, torch.tensor([1.5, 1.0]))
    assert torch.allclose(q.ema_sum.flatten(), torch.tensor([1.5, 9.5]))
    n = 2.5
    smoothed = [(1.5 + 0.1) / (n + 2 * 0.1) * n, (1.0 + 0.1) / (n + 2 * 0.1) * n]
    assert torch.allclose(q.embedding.flatten(), torch.tensor([1.5 / smoothed[0], 9.5 / smoothed[1]]))


def test_ema_unused_codes_never_blow_up():
    """The classic trap: counts at 0 with sums at the codebook send unused codes to infinity."""
    torch.manual_seed(0)
    q = EMAQuantizer(16, 4, decay=0.9)
    start = q.embedding.clone()
    z = start[0].view(1, 4, 1, 1).expand(8, 4, 2, 2).contiguous()  # always code 0
    for _ in range(200):
        q(z)
    assert torch.isfinite(q.embedding).all()
    # counts and sums decay together, so an unused code can only shrink towards the origin, never grow
    assert (q.embedding[1:].norm(dim=1) <= start[1:].norm(dim=1) + 1e-5).all()
    naive = EMAQuantizer(16, 4, decay=0.9)
    naive.set_codes(torch.arange(16), start)
    naive.ema_count.zero_()  # the trap itself: the unused codes explode
    for _ in range(20):
        naive(z)
    assert (naive.embedding[1:].norm(dim=1) > 100 * start[1:].norm(dim=1)).all()


def test_simvq_map_gets_gradient_when_most_codes_unused():
    torch.manual_seed(0)
    q = SimVQ(256, 8)
    z = q.codebook()[3].detach().view(1, 8, 1, 1) + 0.01 * torch.randn(4, 8, 2, 2)
    out = q(z)
    assert out.counts.nonzero().numel() == 1  # one code used out of 256
    recon = out.quantized.sum() * 0 + out.loss + ((out.quantized - 1) ** 2).mean()
    recon.backward()
    assert q.proj.weight.grad is not None and q.proj.weight.grad.abs().sum() > 0
    before = q.codebook().detach().clone()
    torch.optim.SGD(q.parameters(), lr=0.5).step()
    moved = (q.codebook().detach() - before).norm(dim=1) > 0
    assert moved.float().mean() > 0.99  # every code moves, used or not


def test_fsq_indices_round_trip():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 3], dim=6)
    assert fsq.codebook_size == 120
    z = torch.randn(4, 6, 5, 5) * 3
    out = fsq(z)
    assert out.indices.min() >= 0 and out.indices.max() < 120
    assert torch.allclose(fsq.lookup(out.indices), out.quantized.detach(), atol=1e-5)
    every = torch.arange(120).view(1, 120, 1)
    grid = fsq._indices_to_normalized(every) * (fsq.levels // 2).view(1, -1, 1, 1)
    assert torch.equal(fsq._grid_to_indices(grid), every)
    assert fsq.codebook().shape == (120, 6)


def test_dead_codes_restart_from_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2, restart_dead=1)
    z = torch.randn(1, 2, 4, 4) + 100  # far from every initial code: one code wins, seven die
    q(z)
    assert q.restarted == 7
    rows = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for code in q.embedding.detach():
        if code.abs().max() > 50:  # a restarted code: must be one of the encoder outputs
            assert ((rows - code).abs().sum(1) < 1e-6).any()
    assert (q.embedding.detach().abs().max(1).values > 50).sum() >= 7


def test_underused_codes_restart_below_a_share_of_the_mean():
    """--restart-below restarts a code that is used, but rarely; --restart-dead alone never touches it."""
    torch.manual_seed(0)
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    # 61 rows near code 0, one row on each of codes 1..3: every code is used at every step, 1..3 at 1/16 of the mean
    rows = torch.cat([torch.randn(61, 2) * 0.1, codebook[1:]])
    z = rows.t().reshape(1, 2, 8, 8)
    idle_only = VectorQuantizer(4, 2, restart_dead=1)
    below = VectorQuantizer(4, 2, restart_dead=1, restart_below=0.5)
    assert "usage" not in idle_only.state_dict() and "usage" in below.state_dict()
    for q in (idle_only, below):
        q.embedding.data.copy_(codebook)
    # share 1/16 per step: the average (decay 0.99) falls from 1 below 0.5 after ~73 steps, then the codes restart
    steps = 0
    while not below.restarted and steps < 100:
        idle_only(z)
        below(z)
        steps += 1
        assert idle_only.restarted == 0
    assert 60 <= steps <= 80 and below.restarted == 3
    assert torch.equal(idle_only.embedding.detach(), codebook)
    moved = (below.embedding.detach() - codebook).abs().sum(1) > 1e-6
    assert moved[1:].all() and not moved[0]
    assert torch.allclose(below.usage[1:], torch.ones(3))  # restarted codes start again at the mean share


def test_restart_below_is_checked():
    with pytest.raises(ValueError, match="restart_below"):
        VectorQuantizer(4, 2, restart_below=1.5)
    from vqgen.vqvae import AEConfig

    with pytest.raises(ValueError, match="restart_below"):
        AEConfig(quantizer="fsq", restart_below=0.3)


def test_kmeans_init_puts_codes_on_the_data():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres[torch.arange(300) % 3] + 0.1 * torch.randn(300, 2)
    found = kmeans(x, 3, iters=20)
    dist = torch.cdist(found, centres).min(1).values
    assert dist.max() < 0.5
    q = EMAQuantizer(3, 2, kmeans_init=True)
    q.train()
    q(x.t().reshape(1, 2, 300, 1))
    assert bool(q.initialized)
    assert torch.cdist(q.embedding, centres).min(1).values.max() < 1.0


def test_perplexity_and_usage():
    from vqgen.metrics import codes_used, perplexity

    assert math.isclose(perplexity(torch.ones(64)), 64, rel_tol=1e-6)
    assert math.isclose(perplexity(torch.tensor([5.0, 0, 0, 0])), 1.0)
    assert codes_used(torch.tensor([1, 0, 3, 0])) == 0.5


@pytest.mark.parametrize("kind", ["vq", "ema", "simvq", "simvq-diag"])
def test_restarts_and_kmeans_keep_backward_working(kind):
    """Codebook edits inside the forward (k-means, restarts) must not break this step's backward pass."""
    from vqgen.quantize import build_quantizer

    torch.manual_seed(0)
    q = build_quantizer(kind, 64, 8, restart_dead=1, kmeans_init=True)
    for _ in range(3):
        z = (torch.randn(2, 8, 4, 4) * 0.1 + 5).requires_grad_()  # far from most codes: many restarts
        out = q(z)
        (out.loss + out.quantized.square().mean()).backward()
        assert z.grad is not None and torch.isfinite(z.grad).all()
    assert q.restarted > 0


@pytest.mark.parametrize("kind", ["vq", "ema", "simvq"])
@pytest.mark.parametrize(("lookup_dim", "cosine"), [(0, True), (4, False), (4, True)])
def test_lookup_variants_keep_the_interface(kind, lookup_dim, cosine):
    torch.manual_seed(0)
    cls = {"vq": VectorQuantizer, "ema": EMAQuantizer, "simvq": SimVQ}[kind]
    quantizer = cls(32, 8, lookup_dim=lookup_dim, cosine=cosine, kmeans_init=True)
    quantizer.train()(torch.randn(4, 8, 3, 3))  # k-means initialisation and one update in the code space
    quantizer.eval()
    codes = quantizer.codebook()
    assert codes.shape == (32, lookup_dim or 8)
    if cosine:
        assert torch.allclose(codes.norm(dim=1), torch.ones(32), atol=1e-5)
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = quantizer(z)
    # lookup(indices) is exactly what the decoder received
    assert torch.allclose(out.quantized.detach(), quantizer.lookup(out.indices), atol=1e-6)
    # the chosen code is the nearest one in the code space
    in_code_space = quantizer._to_codes(z.detach().permute(0, 2, 3, 1).reshape(-1, 8))
    assert torch.equal(out.indices.flatten(), nearest_code(in_code_space, codes.detach()))
    # straight-through: the decoder's gradient reaches z as if quantisation were the identity in the code space
    upstream = torch.randn_like(out.quantized)
    (out.quantized * upstream).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    identity = quantizer._from_codes(quantizer._to_codes(z2.permute(0, 2, 3, 1).reshape(-1, 8)))
    (identity.view(2, 3, 3, 8).permute(0, 3, 1, 2) * upstream).sum().backward()
    assert z.grad.abs().sum() > 0 and torch.allclose(z.grad, z2.grad, atol=1e-5)


def test_lookup_options_are_refused_for_fsq():
    from vqgen.vqvae import AEConfig

    with pytest.raises(ValueError, match="fsq"):
        AEConfig(quantizer="fsq", cosine=True)
    with pytest.raises(ValueError, match="lookup_dim"):
        AEConfig(lookup_dim=128, embed_dim=64)
