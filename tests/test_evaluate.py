"""`vqgen eval` and `vqgen plot`: metrics on known inputs, the cached classifier, and tiny end-to-end runs."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from PIL import Image

from vqgen import metrics
from vqgen.data import SHAPES_VERSION

from conftest import run_cli

# the report sections that must reproduce exactly
NUMBERS = ("reconstruction", "likelihood", "samples", "structure", "fidelity_diversity")


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)


# ----------------------------------------------------------------------------------------------- metrics


def test_psnr_and_ssim_of_identical_images():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert metrics.psnr_from_mse(float(metrics.image_mse(x, x).mean())) == metrics.PSNR_CAP
    assert metrics.psnr_from_mse(0.01) == pytest.approx(20.0)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(4), atol=1e-5)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    assert float(metrics.ssim(noisy, x).max()) < 0.9


def test_perplexity_and_entropy_of_uniform_use():
    for k in (1, 7, 512):
        counts = torch.full((k,), 10)
        assert metrics.perplexity(counts) == pytest.approx(k)
        assert metrics.entropy_bits(counts) == pytest.approx(math.log2(k), abs=1e-9)
        assert metrics.codes_used(counts) == 1.0
    counts = torch.zeros(64, dtype=torch.long)
    counts[:8] = 5  # uniform over 8 of 64 codes: unused codes change neither
    assert metrics.perplexity(counts) == pytest.approx(8)
    assert metrics.codes_used(counts) == pytest.approx(1 / 8)


def test_frechet_distance_is_zero_for_a_set_and_grows_with_a_shift():
    a = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [0.1, 0.5, 1.0, 2.0]
    distances = [metrics.frechet_distance(a, a + s) for s in shifts]
    assert distances == sorted(distances) and distances[0] > 0
    # equal covariances: only the means differ, by s in each of 8 dimensions
    assert distances == pytest.approx([8 * s**2 for s in shifts], rel=1e-4)
    assert metrics.frechet_distance(a, 2 * a) > metrics.frechet_distance(a, 1.5 * a) > 0


def test_distinct_and_copy_fractions_on_a_hand_made_case():
    train = torch.tensor([[[0, 1], [2, 3]], [[1, 1], [1, 1]]])
    samples = torch.tensor(
        [
            [[0, 1], [2, 3]],  # a copy of train grid 0
            [[0, 1], [2, 3]],  # the same copy again: not distinct
            [[0, 2], [1, 3]],  # the same codes transposed: new
            [[1, 1], [1, 1]],  # a copy of train grid 1
        ],
        dtype=torch.int16,  # storage dtypes differ from the train codes': keys must not
    )
    assert metrics.distinct_fraction(samples) == pytest.approx(3 / 4)
    assert metrics.copy_fraction(samples, train) == pytest.approx(3 / 4)
    assert metrics.copy_fraction(samples, set(metrics.grid_keys(train))) == pytest.approx(3 / 4)
    assert metrics.copy_fraction(samples[2:3], train) == 0.0
    assert metrics.distinct_fraction(samples[:0]) == 0.0 and metrics.copy_fraction(samples[:0], train) == 0.0


# ----------------------------------------------------------------------------------------------- the classifier


def _toy_data(n: int = 64):
    """Two classes of 8×8 grey images: dark and bright, so a few steps already separate them."""
    from vqgen.data import ImageData, Split

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = (labels.view(n, 1, 1, 1) * 150 + torch.randint(0, 100, (n, 1, 8, 8), generator=g)).to(torch.uint8)
    split = Split(images, labels)
    return ImageData("toy", split, split, 2, ["dark", "bright"])


def test_classifier_is_cached_and_retrained_when_settings_change(tmp_path):
    from vqgen.classifier import classifier_path, load_or_train_classifier

    data, cpu = _toy_data(), torch.device("cpu")
    path = classifier_path(tmp_path, "toy.npz", data.image_shape)
    assert (
        path.parent == tmp_path / "classifiers"
        and path.name.startswith("toy-")
        and path.name.endswith("1x8.safetensors")
    )
    assert classifier_path(tmp_path, "MNIST", (1, 28, 28)).name == "mnist-1x28.safetensors"

    first, info = load_or_train_classifier(data, "toy.npz", tmp_path, cpu, steps=3)
    assert not info["cached"] and path.exists() and path.with_suffix(".json").exists()
    again, info = load_or_train_classifier(data, "toy.npz", tmp_path, cpu, steps=3)
    assert info["cached"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    _, info = load_or_train_classifier(data, "toy.npz", tmp_path, cpu, steps=4)  # other settings: retrain
    assert not info["cached"] and json.loads(path.with_suffix(".json").read_text())["steps"] == 4
    path.write_bytes(b"not a safetensors file")  # damaged: retrain rather than fail
    _, info = load_or_train_classifier(data, "toy.npz", tmp_path, cpu, steps=4)
    assert not info["cached"]
    _, info = load_or_train_classifier(data, "toy.npz", tmp_path, cpu, steps=4)
    assert info["cached"]


def test_natural_colour_images_get_the_stronger_classifier_recipe(tmp_path):
    from vqgen.classifier import NATURAL_RECIPE, SMALL_RECIPE, Classifier, load_or_train_classifier, recipe_for

    assert recipe_for("cifar10.npz", (3, 32, 32)) is NATURAL_RECIPE
    assert recipe_for("shapes", (3, 32, 32)) is SMALL_RECIPE  # synthetic flat fills: the small net is > 99%
    assert recipe_for("mnist", (1, 28, 28)) is SMALL_RECIPE
    assert NATURAL_RECIPE.steps(36_000) == 3375 and SMALL_RECIPE.steps(60_000) == 600  # capped
    small, double = Classifier(3, 10, 16), Classifier.for_recipe(3, 10, NATURAL_RECIPE)
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in c.modules()) for c in (small, double)]
    assert convs == [4, 7]
    from vqgen.data import ImageData, Split

    grey = _toy_data().train
    split = Split(grey.images.expand(-1, 3, -1, -1).contiguous(), grey.labels)
    colour = ImageData("toy", split, split, 2, ["dark", "bright"])
    _, info = load_or_train_classifier(colour, "toy.npz", tmp_path, torch.device("cpu"), steps=2)
    assert info["recipe"]["name"] == "natural" and not info["cached"]


def test_large_images_are_classified_from_their_32_pixel_average():
    from vqgen.classifier import LARGE_RECIPE, Classifier, recipe_for

    recipe = recipe_for("photos/", (3, 64, 64))
    assert recipe is LARGE_RECIPE and recipe_for("photos/", (3, 32, 32)) is not LARGE_RECIPE
    clf = Classifier.for_recipe(3, 5, recipe).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    halved = torch.nn.functional.avg_pool2d(x, 2)  # (2, 3, 32, 32): each output pixel the mean of a 2×2 block
    with torch.no_grad():
        assert torch.allclose(clf.features(x), clf.features(halved), atol=1e-5)
    assert "input_size" not in recipe_for("cifar10", (3, 32, 32)).record()  # older caches keep matching


def test_flip_and_shift_moves_whole_images_within_the_padding():
    from vqgen.classifier import flip_and_shift

    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    out = flip_and_shift(x, torch.Generator().manual_seed(0), pad=4)
    assert out.shape == x.shape
    # the centre 8×8 of every output is a contiguous 8×8 window of the (possibly mirrored) input, at a shift ≤ 4
    for i in range(2):
        centre = out[i, :, 4:12, 4:12]
        found = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if torch.equal(centre, (x[i].flip(2) if flip else x[i])[:, 4 + dy : 12 + dy, 4 + dx : 12 + dx])
        ]
        assert len(found) == 1


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """A tiny autoencoder and a tiny class-conditional prior on shapes, shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    ae, codes, prior = root / "ae", root / "codes.safetensors", root / "prior"
    tiny_ae = ("--steps", "5", "--batch-size", "16", "--hidden", "32", "--codebook-size", "32", "--device", "cpu")
    assert run_cli("train-ae", "--out", ae, *tiny_ae).code == 0
    assert run_cli("encode", "--ae", ae, "--out", codes, "--device", "cpu").code == 0
    tiny_prior = ("--layers", "1", "--width", "32", "--steps", "2", "--device", "cpu")
    assert run_cli("train-prior", "--codes", codes, "--out", prior, *tiny_prior).code == 0
    return ae, prior


def _eval(*args: str):
    return run_cli(
        "eval", "--device", "cpu", "--train-limit", "2000", "--classifier-steps", "5", "--two-sample-steps", "20", *args
    )


def test_eval_autoencoder_only(runs):
    ae, _ = runs
    result = _eval("--ae", ae, "--n", "16")
    assert result.code == 0, result.err
    assert "PSNR" in result.out and "SSIM" in result.out
    report = json.loads((ae / "eval.json").read_text())
    assert report["kind"] == "vqgen-eval" and report["data"]["name"] == "shapes"
    rec = report["reconstruction"]
    assert rec["split"] == "test" and rec["n"] == 2000 and rec["codebook_size"] == 32
    assert {"likelihood", "samples"}.isdisjoint(report)
    # labelled data: the classifier says whether the reconstructions keep their class and their statistics
    assert report["classifier"]["n"] == 2000 and rec["n_classified"] == 16
    assert 0 <= rec["recon_class_accuracy"] <= 1 and 0 <= rec["original_class_accuracy"] <= 1
    assert rec["frechet_recon_vs_test"] >= 0 and rec["frechet_train_vs_test"] >= 0
    assert "reconstructions keeping their class" in result.out
    # beyond texture: reconstructions against held-out images, train images as the level of two draws of one set
    structure = report["structure"]
    assert set(structure) >= {"test", "reconstructions"} and "samples" not in structure
    assert structure["test"]["gap"] == pytest.approx(
        structure["test"]["class_accuracy"] - structure["test"]["shuffled_class_accuracy"]
    )
    assert structure["test"]["class_accuracy"] == rec["original_class_accuracy"]
    assert set(report["fidelity_diversity"]) >= {"train", "reconstructions"}
    assert set(report["two_sample"]) == {"network", "reconstructions_vs_test", "train_vs_test"}
    assert "two-sample accuracy" in result.out and "precision / recall" in result.out
    assert rec["psnr"] == pytest.approx(metrics.psnr_from_mse(rec["mse"]))
    assert -1 <= rec["ssim"] <= 1 and 0 < rec["codes_used"] <= 1 and 1 <= rec["perplexity"] <= 32
    assert not list(ae.glob(".eval.json.*"))  # written atomically: no temporary left behind


def test_eval_with_prior_is_complete_and_reproducible(runs, data_root):
    ae, prior = runs
    result = _eval("--prior", prior, "--n", "32")
    assert result.code == 0, result.err
    assert "bits per code" in result.out and "Fréchet distance" in result.out
    report = json.loads((prior / "eval.json").read_text())
    assert report["runs"]["prior"]["class_conditional"] is True and report["runs"]["ae"]["run"] == str(ae)

    nll = report["likelihood"]
    assert nll["split"] == "test" and nll["n"] == 2000 and nll["labels"] == "true"
    assert nll["bits_per_image"] == pytest.approx(nll["bits_per_code"] * 64)
    assert 0 < nll["unigram_bits_per_code"] <= 5 and nll["unigram_split"] == "train" and nll["unigram_n"] == 2000
    # the held-out codes are those the prior was evaluated on at the end of training
    final = [json.loads(line) for line in (prior / "metrics.jsonl").read_text().splitlines()][-1]
    assert nll["bits_per_code"] == pytest.approx(final["bits_per_code"], rel=1e-5)

    s = report["samples"]
    assert s["n"] == 32 and s["n_test"] == 32 and s["split"] == "test" and s["train_grids"] == 2000
    assert s["labels"] == "cycling over 4 classes" and 0 <= s["class_accuracy"] <= 1
    assert 0 <= s["recon_class_accuracy"] <= 1
    assert 0 < s["distinct_fraction"] <= 1 and 0 <= s["train_copy_fraction"] <= 1
    for key in ("frechet_samples_vs_test", "frechet_recon_vs_test", "frechet_train_vs_test"):
        assert s[key] >= 0 and math.isfinite(s[key])
    # beyond texture: the samples beside held-out images and reconstructions, each figure explained in a line
    structure = report["structure"]
    assert structure["patch_grid"] == 4
    assert structure["samples"]["class_accuracy"] == pytest.approx(s["class_accuracy"])
    assert structure["reconstructions"]["class_accuracy"] == pytest.approx(s["recon_class_accuracy"])
    for name in ("test", "reconstructions", "samples"):
        row = structure[name]
        assert row["gap"] == pytest.approx(row["class_accuracy"] - row["shuffled_class_accuracy"])
        assert 0 <= row["prediction_kept"] <= 1
    fd = report["fidelity_diversity"]
    assert fd["precision_recall_k"] == 3 and fd["density_coverage_k"] == 5
    for name in ("train", "reconstructions", "samples"):
        assert set(fd[name]) == {"precision", "recall", "density", "coverage"}
        assert all(0 <= fd[name][key] <= 1 for key in ("precision", "recall", "coverage"))
    assert len(fd["samples_per_class"]["recall"]) == 4  # one entry per class of shapes
    two = report["two_sample"]
    assert set(two) == {"network", "samples_vs_reconstructions", "samples_vs_test", "train_vs_test"}
    assert all(0 <= two[key]["accuracy"] <= 1 and two[key]["n_test"] == 32 for key in two if key != "network")
    assert "structure:" in result.out and "two-sample accuracy: samples vs reconstructions" in result.out
    assert "0.5 means it cannot" in result.out  # the line that says what the figure means

    clf = report["classifier"]
    assert clf["split"] == "test" and clf["n"] == 2000 and 0 <= clf["accuracy"] <= 1 and clf["train_steps"] == 5
    assert (data_root / "classifiers" / f"shapes-v{SHAPES_VERSION}-3x32.safetensors").exists()

    # the same seed gives the same figures (the classifier now comes from the cache)
    assert _eval("--prior", prior, "--n", "32").code == 0
    again = json.loads((prior / "eval.json").read_text())
    assert again["classifier"]["cached"] is True
    assert {k: again[k] for k in NUMBERS} == {k: report[k] for k in NUMBERS}
    accuracies = lambda r: {k: v["accuracy"] for k, v in r["two_sample"].items() if k != "network"}  # noqa: E731
    assert accuracies(again) == accuracies(report)
    assert again["classifier"]["accuracy"] == report["classifier"]["accuracy"]


def test_eval_of_an_unconditional_prior_with_the_default_classes(runs, tmp_path):
    _, prior = runs
    out = tmp_path / "unconditional"
    tiny = ("--layers", "1", "--width", "32", "--steps", "2", "--device", "cpu", "--unconditional")
    assert run_cli("train-prior", "--codes", prior.parent / "codes.safetensors", "--out", out, *tiny).code == 0
    result = _eval("--prior", out, "--n", "16")  # --class all: there is no class to ask for, which is no error
    assert result.code == 0, result.err
    s = json.loads((out / "eval.json").read_text())["samples"]
    assert s["labels"] == "none (unconditional prior)" and "class_accuracy" not in s
    assert s["frechet_samples_vs_test"] >= 0


def test_unlabelled_data_is_scored_in_another_sets_features(runs, tmp_path):
    import numpy as np

    from vqgen.data import load_data

    ae, prior = runs
    unlabelled = tmp_path / "unlabelled.npz"
    images = load_data("shapes").test.images[:300]  # (N, 3, 32, 32) uint8
    np.savez(unlabelled, images=images.permute(0, 2, 3, 1).numpy())
    out = tmp_path / "eval.json"
    args = ("--prior", prior, "--data", unlabelled, "--n", "24", "--out", out)
    result = _eval(*args)  # no labels: no classifier of its own, so no distances
    assert result.code == 0, result.err
    assert "frechet_samples_vs_test" not in json.loads(out.read_text())["samples"]
    # but the two-sample test needs no classifier
    assert {"structure", "fidelity_diversity"}.isdisjoint(json.loads(out.read_text()))
    assert 0 <= json.loads(out.read_text())["two_sample"]["samples_vs_reconstructions"]["accuracy"] <= 1
    result = _eval(*args, "--features-from", "shapes")
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    s = report["samples"]
    assert report["classifier"]["data"] == "shapes" and "shapes's classifier" in s["features"]
    assert s["frechet_samples_vs_test"] >= 0 and s["frechet_recon_vs_test"] >= 0
    assert "class_accuracy" not in s and "recon_class_accuracy" not in s  # the classes are another set's
    bad = _eval(*args, "--features-from", str(unlabelled))
    assert bad.code == 2 and "has no labels" in bad.err and bad.err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (("--n", "1"), "--n must be at least 2"),
        (("--ae", "no-such-run"), "does not exist"),
        (("--train-limit", "0"), "--train-limit must be at least 1"),
    ],
)
def test_eval_bad_input_is_one_line(args, message):
    result = _eval(*args)
    assert result.code == 2 and message in result.err
    assert result.err.startswith("error: ") and result.err.count("\n") == 1


def test_eval_rejects_a_prior_as_autoencoder(runs):
    _, prior = runs
    result = _eval("--ae", prior)
    assert result.code == 2 and "is a prior run, not an autoencoder run" in result.err


def test_plot_writes_pngs(runs):
    pytest.importorskip("matplotlib")
    ae, prior = runs
    result = run_cli("plot", ae, "--n", "200", "--device", "cpu")
    assert result.code == 0, result.err
    for name in ("curves.png", "code_usage.png", "codebook_pca.png"):
        with Image.open(ae / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    result = run_cli("plot", prior)
    assert result.code == 0, result.err
    assert (prior / "curves.png").exists() and not (prior / "code_usage.png").exists()


def test_plot_without_matplotlib_says_how_to_install(runs, monkeypatch):
    ae, _ = runs
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import` raise ImportError
    result = run_cli("plot", ae)
    assert result.code == 2
    assert result.err.strip() == "error: matplotlib is needed for plots: pip install -e '.[plots]'"


def test_plot_rejects_a_folder_that_is_not_a_run(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_cli("plot", tmp_path)
    assert result.code == 2 and "config.json" in result.err


def test_classifier_cache_avoids_a_read_only_data_root(tmp_path, monkeypatch):
    from vqgen.classifier import classifier_root

    writable = tmp_path / "writable"
    writable.mkdir()
    assert classifier_root(writable) == writable
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o555)  # like ../shared/datasets: marked read-only, even for root
    monkeypatch.setenv("VQGEN_CACHE", str(tmp_path / "cache"))
    try:
        assert classifier_root(shared) == tmp_path / "cache"
    finally:
        shared.chmod(0o755)


def test_eval_guidance_and_label_frequencies(runs, tmp_path):
    _, prior = runs
    out = tmp_path / "guided.json"
    result = _eval("--prior", prior, "--n", "40", "--class", "none", "--guidance", "2", "--out", out)
    assert result.code == 0, result.err
    s = json.loads(out.read_text())["samples"]
    assert s["guidance"] == 2.0 and s["labels"] == "training label frequencies" and s["n"] == 40
    assert not (prior / "eval-guided.json").exists()  # --out, not the run folder
    cycled = _eval("--prior", prior, "--n", "40", "--out", tmp_path / "plain.json")
    assert cycled.code == 0
    s = json.loads((tmp_path / "plain.json").read_text())["samples"]
    # the tiny prior was trained with the shapes preset, which records guidance 2: eval uses it unless told
    assert s["guidance"] == 2.0 and len(s["per_class_accuracy"]) == 4
    assert s["worst_class_accuracy"] <= s["class_accuracy"]
    plain = _eval("--prior", prior, "--n", "40", "--guidance", "1", "--out", tmp_path / "plain1.json")
    assert plain.code == 0 and json.loads((tmp_path / "plain1.json").read_text())["samples"]["guidance"] == 1.0
    bad = _eval("--prior", prior, "--class", "sometimes")
    assert bad.code == 2 and bad.err.startswith("error: --class")


def test_eval_writes_no_report_for_a_model_replaced_meanwhile(runs, tmp_path, monkeypatch):
    import shutil

    import vqgen.evaluate as evaluate

    ae, _ = runs
    copy = tmp_path / "ae"
    shutil.copytree(ae, copy)
    (copy / "eval.json").unlink(missing_ok=True)  # an earlier test's report
    real_pass = evaluate.split_pass

    def replaced_meanwhile(*args, **kwargs):  # a --force run swaps new weights in while eval works
        result = real_pass(*args, **kwargs)
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes() + b" ")
        return result

    monkeypatch.setattr(evaluate, "split_pass", replaced_meanwhile)
    result = _eval("--ae", copy, "--n", "16")
    assert result.code == 2 and "replaced while it was evaluated" in result.err and result.err.count("\n") == 1
    assert not (copy / "eval.json").exists()


def test_sampling_a_class_with_no_training_images_warns(runs, tmp_path):
    import shutil

    _, prior = runs
    copy = tmp_path / "prior"
    shutil.copytree(prior, copy)
    config = json.loads((copy / "config.json").read_text())
    config["codes"]["class_counts"][1] = 0  # as when a class's only image was held out
    (copy / "config.json").write_text(json.dumps(config))
    result = run_cli("sample", "--prior", copy, "--n", "2", "--class", "1", "--out", tmp_path / "s", "--device", "cpu")
    assert result.code == 0, result.err
    assert "warning: class" in result.err and "no training images" in result.err
    quiet = run_cli("sample", "--prior", copy, "--n", "2", "--class", "2", "--out", tmp_path / "t", "--device", "cpu")
    assert quiet.code == 0 and "warning" not in quiet.err


def test_a_resumed_prior_refuses_a_changed_size(runs, tmp_path):
    import shutil

    _, prior = runs
    copy = tmp_path / "prior"
    shutil.copytree(prior, copy)
    before = (copy / "model.safetensors").read_bytes()
    result = run_cli("train-prior", "--out", copy, "--resume", "--steps", "3", "--layers", "2", "--device", "cpu")
    assert result.code == 2 and "--layers 2 differs from the run's 1" in result.err and result.err.count("\n") == 1
    assert (copy / "model.safetensors").read_bytes() == before
    same = run_cli("train-prior", "--out", copy, "--resume", "--steps", "3", "--layers", "1", "--device", "cpu")
    assert same.code == 0, same.err


def test_plot_keeps_no_plot_of_a_model_replaced_meanwhile(runs, tmp_path, monkeypatch):
    import shutil

    import vqgen.plots as plots

    pytest.importorskip("matplotlib")
    ae, _ = runs
    copy = tmp_path / "ae"
    shutil.copytree(ae, copy)
    for name in ("curves.png", "code_usage.png", "codebook_pca.png"):
        (copy / name).unlink(missing_ok=True)
    real = plots._plot_codebook

    def replaced_meanwhile(*args, **kwargs):
        written = real(*args, **kwargs)
        weights = copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes() + b" ")
        return written

    monkeypatch.setattr(plots, "_plot_codebook", replaced_meanwhile)
    result = run_cli("plot", copy, "--n", "50", "--device", "cpu")
    assert result.code == 2 and "replaced while it was plotted" in result.err
    assert not list(copy.glob("*.png")) or [p.name for p in copy.glob("*.png")] == ["recon.png"]
