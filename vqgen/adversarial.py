"""The adversarial option of stage one, as in VQGAN (Esser et al. 2021, arXiv 2012.09841).

A PatchGAN discriminator scores overlapping patches of an image as real or reconstructed; it trains with the hinge
loss and its own optimizer, and the autoencoder gets the generator's term −mean D(x̂), weighted adaptively by
λ = ‖∇_w L_rec‖ / (‖∇_w L_adv‖ + δ), with both gradients taken at the decoder's last layer w, so the adversarial
term never overwhelms the reconstruction term whatever their scales. Both start after a warm-up of steps: before
it, the discriminator is neither used nor updated.

Feature matching (pix2pixHD, arXiv 1711.11585) needs no pretrained network: the reconstruction is also pulled
towards the original in the discriminator's own hidden layers, mean |D_l(x̂) − D_l(x)| over its layers l, a
perceptual distance that the discriminator keeps learning.

Under torchrun every rank holds the same discriminator: λ uses the global batch's gradients and the discriminator's
gradients are averaged over the ranks before its step, so N processes train what one process does on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.distributed import all_reduce_sum, broadcast_from_rank0, rank_and_world

ADAPTIVE_DELTA = 1e-4  # δ in the adaptive weight
ADAPTIVE_MAX = 1e4  # upper clamp of λ, for the first steps when ‖∇L_adv‖ is tiny


class PatchDiscriminator(nn.Module):
    """(B, C, n, n) in [-1, 1] → (B, 1, p, p) logits, one per overlapping patch.

    Stride-2 4×4 convolutions halve the resolution `layers` times, then a stride-1 4×4 convolution gives the patch
    logits; each logit sees a patch of 34 pixels for 3 layers. GroupNorm rather than BatchNorm: the logits of a real
    and a reconstructed batch must not depend on each other."""

    def __init__(self, channels: int, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(layers - 1):
            blocks += [
                nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False),
                nn.GroupNorm(8, 2 * c),
                nn.LeakyReLU(0.2),
            ]
            c *= 2
        blocks += [nn.Conv2d(c, 1, 4, stride=1, padding=1)]  # (B, 1, p, p)
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (B, C, n, n) → the output of each hidden layer (after its activation), and the patch logits."""
        hidden = []
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                hidden.append(x)
        return hidden, x


def feature_matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the mean absolute difference of the discriminator's features; `real` is a target (no
    gradient flows into it)."""
    return torch.stack([F.l1_loss(f.float(), r.detach().float()) for f, r in zip(fake, real, strict=True)]).mean()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """½·(mean max(0, 1 − D(x)) + mean max(0, 1 + D(x̂))): 0 once real patches score ≥ 1 and fakes ≤ −1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−mean D(x̂): the autoencoder is rewarded where its reconstructions look real to the discriminator."""
    return -fake_logits.mean()


def mean_over_ranks_(t: torch.Tensor) -> torch.Tensor:
    """In place: the mean of t over ranks. Each rank's loss is the mean over its equal shard, so the mean of the
    ranks' gradients is the gradient of the loss over the global batch, as one process computes it."""
    world = rank_and_world()[1]
    return all_reduce_sum(t).div_(world) if world > 1 else t


def adaptive_weight(
    rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor, scale: float = 1.0
) -> torch.Tensor | None:
    """λ = ‖∇_w L_rec‖ / (‖∇_w L_adv‖ + δ) at the decoder's last weight w, clamped to [0, 1e4], without gradient.
    Under torch.distributed the gradients are those of the global batch, so every rank gets the same λ.

    Under fp16 both losses are multiplied by `scale` (a gradient scaler's) before the backward pass, so that small
    gradients do not flush to zero in half precision, and the gradients divided by it after; None where the scaled
    gradients overflowed (try a smaller scale)."""
    rec_grad = mean_over_ranks_(torch.autograd.grad(rec_loss * scale, last_layer, retain_graph=True)[0].float())
    adv_grad = mean_over_ranks_(torch.autograd.grad(adv_loss * scale, last_layer, retain_graph=True)[0].float())
    rec_norm, adv_norm = rec_grad.norm() / scale, adv_grad.norm() / scale
    if scale != 1.0 and not bool(torch.isfinite(rec_norm + adv_norm)):
        return None
    weight = rec_norm / (adv_norm + ADAPTIVE_DELTA)
    return weight.clamp(0.0, ADAPTIVE_MAX).detach()


class Adversary:
    """The discriminator, its optimizer and its schedule: the part of adversarial training that the autoencoder's
    task owns. `generator_term` is added to the autoencoder's loss; `discriminator_step` runs after the
    autoencoder's optimizer step, on the same batch."""

    def __init__(
        self,
        channels: int,
        weight: float,
        start: int,
        lr: float,
        device: torch.device,
        feature_weight: float = 0.0,
        fp16: bool = False,
    ):
        self.weight, self.start, self.feature_weight = weight, start, feature_weight
        # fp16 gradients underflow without a scaler; the discriminator has its own, as it has its own optimizer
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.weight_scale = 2.0**16 if fp16 else 1.0  # the adaptive weight's, halved whenever it overflows
        self.discriminator = PatchDiscriminator(channels).to(device)
        for tensor in self.discriminator.state_dict().values():
            broadcast_from_rank0(tensor)  # every rank starts from one discriminator
        # β1 = 0.5 as in VQGAN: a GAN's moving target makes long momentum harmful
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
        self.steps = 0  # autoencoder steps seen, saved with the training state
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None  # real, fake, D(real)

    @property
    def active(self) -> bool:
        return self.steps >= self.start

    def generator_term(
        self, real: torch.Tensor, recon: torch.Tensor, rec_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted adversarial loss of the autoencoder for this batch (0 before the start step)."""
        zero = rec_loss.new_zeros(())
        if not self.active:
            self._batch = None
            stats = {"adv_weight": zero.detach()}
            return zero, stats | ({"feature_matching": zero.detach()} if self.feature_weight else {})
        # The autoencoder's backward passes need only the discriminator's input gradients: with its weights frozen
        # for this forward pass they skip the weight gradients, which its own step computes anyway.
        self.discriminator.requires_grad_(False)
        try:
            fake_features, fake_logits = self.discriminator.features(recon)
        finally:
            self.discriminator.requires_grad_(True)
        adv = generator_loss(fake_logits)
        lam = adaptive_weight(rec_loss, adv, last_layer, self.weight_scale)
        while lam is None:  # only under fp16; every rank sees the same overflow, as the gradients are all-reduced
            self.weight_scale /= 2
            lam = adaptive_weight(rec_loss, adv, last_layer, self.weight_scale) if self.weight_scale >= 1 else zero
        real_logits = None
        term, stats = self.weight * lam * adv, {"adv_weight": lam}
        if self.feature_weight:
            # one forward pass of the real batch serves both the matching target (detached) and, through its
            # weights' graph, the discriminator's own step on this batch with these same weights
            real_features, real_logits = self.discriminator.features(real.detach())
            matching = feature_matching_loss(fake_features, real_features)
            term = term + self.feature_weight * matching
            stats["feature_matching"] = matching.detach()
        self._batch = (real.detach(), recon.detach(), real_logits)
        return term, stats

    def discriminator_step(self) -> torch.Tensor | None:
        """One hinge-loss update on the last batch's real and reconstructed images; returns the loss (or None)."""
        self.steps += 1
        if self._batch is None:
            return None
        real, fake, real_logits = self._batch
        self._batch = None
        if real_logits is None:
            real_logits = self.discriminator(real)
        loss = hinge_discriminator_loss(real_logits, self.discriminator(fake))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for param in self.discriminator.parameters():
            mean_over_ranks_(param.grad)  # the global batch's gradient, as the autoencoder's DDP gives it
        self.scaler.step(self.optimizer)  # skipped, and the scale halved, where a scaled gradient overflowed
        self.scaler.update()
        return loss.detach()
