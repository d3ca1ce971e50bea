"""The measures that see layout and diversity (vqgen/measures.py): known answers on synthetic data."""

from __future__ import annotations

import pytest
import torch

from vqgen import measures
from vqgen.errors import VQGenError

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- the shuffle


def test_shuffle_is_a_seeded_permutation_of_patches():
    images = _images(6, 18)  # 18 px into a 4×4 grid: patches of 4 px and two border rows and columns left alone
    shuffled = measures.shuffle_patches(images, 4, seed=3)
    assert shuffled.shape == images.shape and shuffled.dtype == images.dtype
    for original, moved in zip(images, shuffled, strict=True):
        assert torch.equal(original.flatten().sort().values, moved.flatten().sort().values)  # same pixel multiset
        # every 4×4 patch of the result is one of the original's patches, each used once
        cut = lambda t: {t[:, r : r + 4, c : c + 4].numpy().tobytes() for r in range(0, 16, 4) for c in range(0, 16, 4)}  # noqa: E731
        assert cut(moved) == cut(original)
        assert torch.equal(moved[:, 16:], original[:, 16:]) and torch.equal(moved[:, :, 16:], original[:, :, 16:])
    assert not torch.equal(shuffled, images)
    assert torch.equal(shuffled, measures.shuffle_patches(images, 4, seed=3))
    assert not torch.equal(shuffled, measures.shuffle_patches(images, 4, seed=4))
    assert torch.equal(measures.shuffle_patches(images, 1, seed=3), images)


def test_shuffle_permutes_each_image_on_its_own():
    # one image repeated: a shared permutation would give identical outputs
    images = _images(1, 16).expand(8, -1, -1, -1).contiguous()
    shuffled = measures.shuffle_patches(images, 4, seed=0)
    assert len({s.numpy().tobytes() for s in shuffled}) > 1


# ----------------------------------------------------------------------------------------------- k-NN measures


def _modes(n_per: int, modes: list[int], seed: int) -> torch.Tensor:
    """Points around well-separated centres (index · 100 on the first axis), n_per per listed mode; 2-d, where the
    k-NN balls of a few points cover a mode well."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(len(modes), 2)
    centres[:, 0] = torch.tensor(modes, dtype=torch.float) * 100
    return (centres[:, None, :] + torch.randn(len(modes), n_per, 2, generator=g)).reshape(-1, 2)


def test_identical_sets_score_one():
    real = _modes(50, [0, 1, 2, 3], seed=0)
    scores = measures.fidelity_diversity(real, real.clone())
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0 and scores["coverage"] == 1.0
    assert scores["density"] == pytest.approx(1.0 + 1 / measures.DENSITY_COVERAGE_K)  # each row in its own ball too


def test_disjoint_sets_score_zero():
    real, fake = _modes(50, [0, 1], seed=0), _modes(50, [5, 6], seed=1)
    assert measures.fidelity_diversity(real, fake) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_samples_on_half_the_modes_have_full_precision_and_half_recall():
    real = _modes(100, [0, 1, 2, 3], seed=0)
    fake = _modes(200, [0, 1], seed=1)  # as many samples, all on two of the four modes
    scores = measures.fidelity_diversity(real, fake)
    assert scores["precision"] > 0.9
    assert scores["recall"] == pytest.approx(0.5, abs=0.05)
    assert scores["coverage"] == pytest.approx(0.5, abs=0.05)


def test_two_draws_of_one_distribution_read_alike():
    real, fake = _modes(300, [0, 1, 2], seed=0), _modes(300, [0, 1, 2], seed=1)
    scores = measures.fidelity_diversity(real, fake)
    assert scores["density"] == pytest.approx(1.0, abs=0.15)
    assert scores["coverage"] > 0.9  # 1 − 2^−5 ≈ 0.97 expected for equal sizes at k = 5
    assert scores["precision"] > 0.6 and scores["recall"] > 0.6


def test_knn_needs_more_rows_than_k():
    with pytest.raises(VQGenError, match="more than k"):
        measures.knn_radii(torch.zeros(3, 2), 3)


# ----------------------------------------------------------------------------------------------- two-sample test


def _blobs(n: int, seed: int) -> torch.Tensor:
    """Images of one distribution: a bright square at a random place on a dark, noisy background."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
    corners = torch.randint(0, 10, (n, 2), generator=g)
    for image, (r, c) in zip(images, corners.tolist(), strict=True):
        image[:, r : r + 6, c : c + 6] = 220
    return images


def test_two_sample_test_cannot_tell_halves_of_one_set_apart():
    images = _blobs(400, seed=0)
    result = measures.two_sample_test(images[:200], images[200:], steps=100, seed=0)
    assert result["n_test"] == 200 and result["n_train"] == 200
    assert abs(result["accuracy"] - 0.5) < 4 * result["null_standard_error"]


def test_two_sample_test_tells_images_from_noise():
    images = _blobs(200, seed=0)
    noise = torch.randint(0, 256, images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    result = measures.two_sample_test(images, noise, steps=100, seed=0)
    assert result["accuracy"] > 0.95


def test_two_sample_test_is_seeded_and_leaves_the_rng_alone():
    a, b = _blobs(40, seed=0), _blobs(40, seed=1)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    first = measures.two_sample_test(a, b, seed=2, steps=20)
    assert torch.equal(torch.rand(1), expected)
    assert measures.two_sample_test(a, b, seed=2, steps=20)["accuracy"] == first["accuracy"]
    with pytest.raises(VQGenError, match="differ"):
        measures.two_sample_test(a, _images(40))
