"""The adversarial option of stage one: the hinge losses, the adaptive weight, the schedule and exact resumption."""

from __future__ import annotations

import json

import torch

from vqgen.adversarial import (
    ADAPTIVE_DELTA,
    Adversary,
    PatchDiscriminator,
    adaptive_weight,
    generator_loss,
    hinge_discriminator_loss,
)

from conftest import run_cli
from test_reliability import AE_FLAGS, _weights, assert_clean_error, resume_matches_straight_run


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # margins: 0, 0.5, 2 → mean 2.5/3
    fake = torch.tensor([-2.0, 0.0, 1.0])  # margins: 0, 1, 2 → mean 1
    assert torch.isclose(hinge_discriminator_loss(real, fake), torch.tensor(0.5 * (2.5 / 3 + 1.0)))
    assert hinge_discriminator_loss(torch.ones(4) * 3, -torch.ones(4) * 3) == 0  # confident and right: no loss
    assert torch.isclose(generator_loss(fake), torch.tensor(1.0 / 3))


def test_adaptive_weight_equals_the_formula_on_a_toy_decoder():
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    z, target = torch.randn(5, 4), torch.randn(5, 3)
    out = decoder(z)
    rec = ((out - target) ** 2).mean()
    adv = -(out * torch.tensor([1.0, -2.0, 0.5])).mean()
    w = decoder[2].weight
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, w, retain_graph=True)[0]
    expected = g_rec.norm() / (g_adv.norm() + ADAPTIVE_DELTA)
    got = adaptive_weight(rec, adv, w)
    assert torch.isclose(got, expected) and not got.requires_grad
    (rec + got * adv).backward()  # the graph is still there for the real backward pass
    assert w.grad is not None


def test_patch_discriminator_scores_patches():
    logits = PatchDiscriminator(3)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 1, 3, 3)


def test_discriminator_waits_for_its_start_step():
    torch.manual_seed(0)
    adversary = Adversary(channels=1, weight=0.5, start=3, lr=1e-3, device=torch.device("cpu"))
    before = [p.detach().clone() for p in adversary.discriminator.parameters()]
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    last = torch.nn.Parameter(torch.randn(1, 1, 3, 3))
    for step in range(5):
        recon = torch.nn.functional.conv2d(real, last, padding=1)
        rec = ((recon - real) ** 2).mean()
        term, stats = adversary.generator_term(real, recon, rec, last)
        changed = any(not torch.equal(a, b) for a, b in zip(before, adversary.discriminator.parameters(), strict=True))
        if step < 3:
            assert term == 0 and stats["adv_weight"] == 0 and not changed
        else:
            assert term != 0 and stats["adv_weight"] > 0
        adversary.discriminator_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, adversary.discriminator.parameters(), strict=True))


def test_generator_pass_leaves_the_discriminator_alone_and_its_step_is_the_hinge_step():
    torch.manual_seed(0)
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    last = torch.nn.Parameter(torch.randn(1, 1, 3, 3))
    for feature_weight in (0.0, 0.3):
        adversary = Adversary(
            1, weight=0.5, start=0, lr=1e-3, device=torch.device("cpu"), feature_weight=feature_weight
        )
        reference = PatchDiscriminator(1)
        reference.load_state_dict(adversary.discriminator.state_dict())
        recon = torch.nn.functional.conv2d(real, last, padding=1)
        rec = ((recon - real) ** 2).mean()
        term, _ = adversary.generator_term(real, recon, rec, last)
        (rec + term).backward()
        assert last.grad is not None and all(p.grad is None for p in adversary.discriminator.parameters())
        adversary.discriminator_step()
        expected_loss = hinge_discriminator_loss(reference(real), reference(recon.detach()))
        expected_loss.backward()
        torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.5, 0.9)).step()
        for got, want in zip(adversary.discriminator.parameters(), reference.parameters(), strict=True):
            assert torch.allclose(got, want, atol=1e-7) and got.requires_grad
        last.grad = None


def test_fp16_scales_the_adaptive_weights_gradients_and_the_discriminators_step():
    torch.manual_seed(0)
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    last = torch.nn.Parameter(torch.randn(1, 1, 3, 3))
    recon = torch.nn.functional.conv2d(real, last, padding=1)
    rec = ((recon - real) ** 2).mean()
    adv = recon.mean() * 1e-6  # a gradient of ~1e-9 per weight: below fp16's smallest subnormal unless scaled
    # scaling is exact in fp32: the weight does not depend on the scale
    assert torch.isclose(adaptive_weight(rec, adv, last, 2.0**16), adaptive_weight(rec, adv, last), rtol=1e-4)
    adversary = Adversary(1, weight=0.5, start=0, lr=1e-3, device=torch.device("cpu"), fp16=True)
    assert adversary.scaler.is_enabled() and adversary.weight_scale > 1
    # a scaler skips the steps whose scaled gradients overflow and halves its scale: start near where it settles
    adversary.scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    before = [p.detach().clone() for p in adversary.discriminator.parameters()]
    params = list(adversary.discriminator.parameters())
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.float16):
            recon = torch.nn.functional.conv2d(real, last, padding=1)
            term, stats = adversary.generator_term(real, recon, ((recon - real) ** 2).mean(), last)
            adversary.discriminator_step()
        assert torch.isfinite(stats["adv_weight"]) and stats["adv_weight"] > 0
        assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))  # scaled steps were taken


def test_adversarial_resume_is_bit_identical(in_tmp, monkeypatch):
    from vqgen.autoencoder import AutoencoderTask

    flags = (*AE_FLAGS, "--adversarial", "0.5", "--adversarial-start", "3")
    resume_matches_straight_run(in_tmp, monkeypatch, "train-ae", AutoencoderTask, flags, at_step=6)
    a = _weights(in_tmp / "straight/model.safetensors")
    sa, sb = _weights(in_tmp / "straight/state.safetensors"), _weights(in_tmp / "cut/state.safetensors")
    discriminator = [k for k in sa if k.startswith("task.adv.")]
    assert discriminator and not any(k.startswith("adv") for k in a)  # its weights stay out of model.safetensors
    for name in discriminator:
        assert torch.equal(sa[name], sb[name]), name
    assert_clean_error(run_cli("train-ae", *AE_FLAGS, "--adversarial", "-1", "--out", "bad"), "--adversarial")


def test_feature_matching_is_the_mean_l1_over_the_discriminators_layers():
    from vqgen.adversarial import feature_matching_loss

    torch.manual_seed(0)
    disc = PatchDiscriminator(3)
    real, fake = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32, requires_grad=True)
    (fr, fl), (rr, _) = disc.features(fake), disc.features(real)
    assert len(fr) == 3 and torch.equal(fl, disc(fake))  # the same logits as forward()
    expected = sum((a - b).abs().mean() for a, b in zip(fr, rr, strict=True)) / 3
    got = feature_matching_loss(fr, rr)
    assert torch.isclose(got, expected) and feature_matching_loss(rr, rr) == 0
    got.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0  # it pulls the reconstruction, not the original


def test_feature_matching_trains_resumes_and_needs_the_discriminator(in_tmp, monkeypatch):
    from vqgen.autoencoder import AutoencoderTask

    flags = (*AE_FLAGS, "--adversarial", "0.5", "--adversarial-start", "2", "--feature-matching", "1")
    resume_matches_straight_run(in_tmp, monkeypatch, "train-ae", AutoencoderTask, flags, at_step=4)
    records = [json.loads(line) for line in (in_tmp / "straight/metrics.jsonl").read_text().splitlines()]
    matching = [r["feature_matching"] for r in records if r["split"] == "train"]
    assert matching and matching[-1] > 0
    assert json.loads((in_tmp / "straight/config.json").read_text())["adversarial"]["feature_matching"] == 1
    assert_clean_error(run_cli("train-ae", *AE_FLAGS, "--feature-matching", "1", "--out", "bad"), "--adversarial")


def test_preset_adversarial_settings_fill_only_what_is_unset():
    from vqgen.autoencoder import AdversarialConfig
    from vqgen.presets import Preset

    preset = Preset(ae_adversarial=0.2, ae_adversarial_start=1600, ae_feature_matching=0.3)
    unset = AdversarialConfig(None, None, None, None)
    assert unset.with_preset(preset) == AdversarialConfig(0.2, 1600, None, 0.3)
    assert unset.with_preset(Preset()) == AdversarialConfig(0.0, 0, None, 0.0)  # other data sets: off
    # a weight of one's own (0 included) does not inherit the preset's start and feature matching
    assert AdversarialConfig(0.5, None, None, None).with_preset(preset) == AdversarialConfig(0.5, 0, None, 0.0)
    assert AdversarialConfig(0.0, None, None, None).with_preset(preset) == AdversarialConfig(0.0, 0, None, 0.0)
    # a start or feature weight given alone overrides the preset's, beside its weight
    given = AdversarialConfig(None, 10, 1e-4, 0.0).with_preset(preset)
    assert given == AdversarialConfig(0.2, 10, 1e-4, 0.0)
