"""Evaluate a run: reconstructions (stage one), held-out likelihood (stage two) and samples, into eval.json.

Sample quality is read through a classifier trained on the data set itself: see vqgen.classifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vqgen import __version__
from vqgen import checkpoint as ckpt
from vqgen.autoencoder import DataConfig, data_config_of, data_for, load_autoencoder
from vqgen.classifier import Classifier, classifier_outputs, classifier_root, load_or_train_classifier
from vqgen.codes import CodesFile
from vqgen.data import ImageData, Split, default_root
from vqgen.device import resolve_device
from vqgen.errors import VQGenError
from vqgen.measures import TWO_SAMPLE_STEPS
from vqgen.metrics import (
    copy_fraction,
    distinct_fraction,
    entropy_bits,
    frechet_distance,
    grid_keys,
)
from vqgen.passes import split_pass
from vqgen.progress import make_progress
from vqgen.vqvae import VQVAE

EVAL_FILE = "eval.json"


@dataclass
class EvalOptions:
    n: int = 1000  # samples, and held-out images they are compared with
    seed: int = 0
    batch_size: int = 500  # images per forward pass, grids sampled in parallel
    temperature: float = 1.0
    guidance: float | None = None  # None: the scale recorded in the prior's config.json
    classes: str = "all"  # all (cycling, uniform), none (training label frequencies) or null (the null class)
    train_limit: int = 60_000  # train images encoded for the unigram entropy and the memorisation check
    classifier_steps: int | None = None  # None: as the data set's ClassifierRecipe says
    # Another labelled data set whose classifier gives the features (an unlabelled set has none of its own); its
    # images are resized to the evaluated ones. None: the evaluated data set's own classifier.
    features_from: str | None = None
    two_sample_steps: int = (
        TWO_SAMPLE_STEPS  # training steps of each two-sample test's network (vqgen.measures.TWO_SAMPLE_STEPS)
    )

    def validate(self) -> None:
        from vqgen.limits import MAX_BATCH, MAX_SAMPLES, check_count

        check_count(self.n, "--n", MAX_SAMPLES)
        if self.n < 2:
            raise VQGenError(f"--n must be at least 2 (a Fréchet distance needs a covariance), not {self.n}")
        check_count(self.batch_size, "--batch-size", MAX_BATCH)
        if not self.temperature > 0:
            raise VQGenError(f"--temperature must be > 0, not {self.temperature}")
        if self.classes not in ("all", "none", "null"):
            raise VQGenError(f"--class must be all, none or null, not '{self.classes}'")
        if self.train_limit < 1:
            raise VQGenError(f"--train-limit must be at least 1, not {self.train_limit}")
        check_count(self.two_sample_steps, "--two-sample-steps", 100_000)
        if self.classifier_steps is not None and self.classifier_steps < 1:
            raise VQGenError(f"--classifier-steps must be at least 1, not {self.classifier_steps}")


# ----------------------------------------------------------------------------------------------- stage one


# ----------------------------------------------------------------------------------------------- the whole run


def _load_data(model: VQVAE, ae_config: dict, data: str | None, data_root: str | None) -> tuple[DataConfig, ImageData]:
    """The data to evaluate on: the autoencoder's own unless --data names another, resized to what it expects."""
    dataset = data_for(model, ae_config, data, data_root)
    dc = data_config_of(ae_config) if data is None else DataConfig(data, data_root)
    dc.data_root = data_root if data_root is not None else dc.data_root
    if len(dataset.test) == 0 or len(dataset.train) == 0:
        raise VQGenError(f"data '{dataset.name}' has an empty train or test split; nothing to evaluate")
    return dc, dataset


def evaluate_run(
    ae_run: str | Path | None = None,
    prior_run: str | Path | None = None,
    data: str | None = None,
    data_root: str | None = None,
    opts: EvalOptions | None = None,
    device: str = "auto",
    ignore_hash: bool = False,
    console=None,
    out: str | Path | None = None,
    bottom_run: str | Path | None = None,
) -> tuple[dict, Path]:
    """Evaluate an autoencoder run, and a prior run with it; write the report to `out`, by default eval.json in the
    prior's folder (else the autoencoder's). Returns the report and the path written."""
    from vqgen.priors.training import evaluate_prior
    from vqgen.sample import (
        SamplingOptions,
        decode_codes,
        load_pipeline,
        resolve_classes,
        resolve_guidance,
        sample_levels,
    )

    opts = opts or EvalOptions()
    opts.validate()
    run_folder = Path(prior_run) if prior_run is not None else Path(ae_run) if ae_run is not None else Path("runs/ae")
    ckpt.check_writable(Path(out) if out is not None else run_folder / EVAL_FILE)  # before the work, not after
    t0 = time.perf_counter()
    dev = resolve_device(device)
    pipe = None
    if prior_run is not None:
        # checks the autoencoder's hash and sizes (and finds a two-level autoencoder's bottom prior)
        pipe = load_pipeline(prior_run, device, ae_run, ignore_hash, bottom_run=bottom_run)
        ae_dir = pipe.ae_dir
        model, ae_config = pipe.ae, ckpt.read_config(ae_dir, "vqvae")
    else:
        ae_dir = Path(ae_run) if ae_run is not None else Path("runs/ae")
        model, ae_config = load_autoencoder(ae_dir, dev)
    dc, dataset = _load_data(model, ae_config, data, data_root)
    if opts.features_from is not None:  # refused before the reconstruction pass, not after it
        c, size, _ = dataset.image_shape
        _check_labelled(DataConfig(opts.features_from, dc.data_root, size, c).load(), opts.features_from)
    test, k, m = dataset.test, model.cfg.codebook_size, model.cfg.grid_size
    labelled = dataset.train.labels is not None and dataset.test.labels is not None and dataset.num_classes >= 2
    scored = labelled or opts.features_from is not None  # whether a classifier's features are there to compare in
    classes_scored = labelled and opts.features_from is None  # whether its classes are the data's classes
    n_test = min(opts.n, len(test))  # held-out images the samples are compared with

    report: dict = {
        "kind": "vqgen-eval",
        "vqgen_version": __version__,
        "seed": opts.seed,
        "device": str(dev),
        "runs": {"ae": {"run": str(ae_dir), "sha256": ckpt.sha256(ae_dir / ckpt.WEIGHTS)}},
        "data": {
            "name": dataset.name,
            "source": dc.data,
            "image_shape": list(dataset.image_shape),
            "train_size": len(dataset.train),
            "test_size": len(test),
            "num_classes": dataset.num_classes,
        },
    }
    with make_progress(console) as progress:
        # ---- stage one: reconstructions of the whole held-out split
        held_out = split_pass(model, test, dev, opts.batch_size, codes=True, keep=n_test, progress=progress)
        rec, test_codes, recons = held_out.metrics, held_out.grids, held_out.recons
        report["reconstruction"] = {"split": "test", "n": len(test), **rec, "codebook_size": k}
        if pipe is None and scored:
            # ---- what the classifier makes of the reconstructions: do they keep their class, their statistics?
            clf, reference = _classifier_reference(report, dataset, dc, dev, opts, progress, recons, n_test)
            report["reconstruction"] |= {
                "n_classified": n_test,
                "frechet_recon_vs_test": reference["frechet_recon_vs_test"],
                "frechet_train_vs_test": reference["frechet_train_vs_test"],
            }
            if classes_scored:
                report["reconstruction"] |= {
                    "recon_class_accuracy": reference["recon_class_accuracy"],
                    "original_class_accuracy": reference["original_class_accuracy"],
                }
            sets = _reference_sets(dataset, recons, n_test, reference, classes_scored)
            report |= beyond_texture(sets, clf, dev, opts, progress)
        elif pipe is None:
            sets = _reference_sets(dataset, recons, n_test, None, False, opts.seed)
            report |= beyond_texture(sets, None, dev, opts, progress)
        if pipe is not None:
            # ---- stage two: held-out likelihood, beside the unigram entropy (a prior that ignores context)
            limit = min(opts.train_limit, len(dataset.train))
            train_split = Split(dataset.train.images[:limit], None)
            train_codes = split_pass(  # [(M, m_l, m_l)] per level
                model, train_split, dev, opts.batch_size, decode=False, codes=True, progress=progress, label="encode"
            ).grids
            prior_cfg = pipe.prior.cfg
            report["runs"]["prior"] = {
                "run": str(prior_run),
                "sha256": ckpt.sha256(Path(prior_run) / ckpt.WEIGHTS),
                "arch": prior_cfg.arch,
                "class_conditional": prior_cfg.num_classes > 0,
            }
            if pipe.bottom is not None:
                report["runs"]["bottom_prior"] = {
                    "run": str(pipe.bottom_run),
                    "sha256": ckpt.sha256(pipe.bottom_run / ckpt.WEIGHTS),
                    "arch": pipe.bottom.cfg.arch,
                    "class_conditional": pipe.bottom.cfg.num_classes > 0,
                }
            # True labels only where they mean what the prior learned: the same number of classes.
            use_labels = labelled and prior_cfg.num_classes == dataset.num_classes
            two = len(test_codes) == 2
            codes = CodesFile(
                train_codes[-1],
                test_codes[-1],
                None,
                test.labels if use_labels else None,
                k,
                m,
                dataset.num_classes if use_labels else 0,
                dataset.name,
                str(ae_dir),
                "",
                None,
                train_codes[0] if two else None,
                test_codes[0] if two else None,
            )
            # a two-level image costs the top grid's bits plus the bottom's given the top
            per_level = [(pipe.prior, codes.level("top" if two else "single"))]
            per_level += [(pipe.bottom, codes.level("bottom"))] if two else []
            bits = sum(evaluate_prior(p, c, dev, batch_size=opts.batch_size)["bits_per_image"] for p, c in per_level)
            unigram_image = sum(
                entropy_bits(torch.bincount(g.flatten(), minlength=k)) * g.shape[1] * g.shape[2] for g in train_codes
            )
            codes_per_image = sum(g.shape[1] * g.shape[2] for g in test_codes)
            report["likelihood"] = {
                "split": "test",
                "n": len(test),
                "labels": "true" if use_labels and prior_cfg.num_classes > 0 else "none",
                "bits_per_code": bits / codes_per_image,
                "bits_per_image": bits,
                "unigram_bits_per_code": unigram_image / codes_per_image,
                "unigram_bits_per_image": unigram_image,
                "unigram_split": "train",
                "unigram_n": limit,
                "levels": len(test_codes),
            }

            # ---- samples: N grids, labels cycling over the classes for a class-conditional prior (or as --class says)
            n = opts.n
            if prior_cfg.num_classes == 0 and opts.classes in ("all", "none"):
                labels, how = None, "none"  # an unconditional prior: its samples have no class to ask for
            elif prior_cfg.num_classes > 0 and opts.classes == "all":
                labels = torch.arange(n) % prior_cfg.num_classes
                how = f"cycling over {prior_cfg.num_classes} classes"
            else:
                labels, _ = resolve_classes(pipe, [opts.classes], n, opts.seed)
                how = "training label frequencies" if labels is not None else "null class"
            sampling = SamplingOptions(
                temperature=opts.temperature, batch_size=opts.batch_size, seed=opts.seed, guidance=opts.guidance
            )
            guidance = resolve_guidance(pipe, opts.guidance, labels is not None)
            bar = progress.add_task("sample", total=1, info=f"{n} grids")
            levels = sample_levels(pipe, n, labels, sampling)  # [(n, m_l, m_l)] per level
            grids = torch.cat([g.flatten(1) for g in levels], dim=1)  # (n, codes per image): one key per image
            progress.update(bar, completed=1)
            samples = {
                "n": n,
                "temperature": opts.temperature,
                "guidance": 1.0 if guidance is None and labels is not None else guidance,
                "labels": how if prior_cfg.num_classes > 0 else "none (unconditional prior)",
                "distinct_fraction": distinct_fraction(grids),
                "train_copy_fraction": copy_fraction(
                    grids, set(grid_keys(torch.cat([g.flatten(1) for g in train_codes], dim=1)))
                ),
                "train_split": "train",
                "train_grids": limit,
            }
            images = decode_codes(pipe, levels, opts.batch_size)  # (n, C, n, n) uint8
            asked = labels if classes_scored and prior_cfg.num_classes == dataset.num_classes else None
            clf, reference, sample_feats = None, None, None
            if scored:
                # ---- sample quality through the classifier's eyes
                clf, reference = _classifier_reference(report, dataset, dc, dev, opts, progress, recons, n_test)
                sample_feats, sample_preds = classifier_outputs(clf, images, dev, opts.batch_size)
                samples |= {
                    "split": "test",
                    "n_test": n_test,
                    "frechet_samples_vs_test": frechet_distance(sample_feats, reference["test_features"]),
                    # the floor a perfect prior would reach with this autoencoder
                    "frechet_recon_vs_test": reference["frechet_recon_vs_test"],
                    # the estimator's own noise at this N: real train images against real held-out ones
                    "frechet_train_vs_test": reference["frechet_train_vs_test"],
                    "features": f"classifier penultimate layer ({clf.head.in_features}-d)"
                    + (f" of {opts.features_from}'s classifier" if opts.features_from is not None else ""),
                }
                if classes_scored:
                    # the ceiling of class accuracy: how often the class survives the autoencoder
                    samples["recon_class_accuracy"] = reference["recon_class_accuracy"]
                if classes_scored and labels is not None and prior_cfg.num_classes == dataset.num_classes:
                    hits = (sample_preds == labels).double()
                    samples["class_accuracy"] = float(hits.mean())
                    per_class = [
                        float(hits[labels == c].mean()) for c in range(prior_cfg.num_classes) if (labels == c).any()
                    ]
                    samples["worst_class_accuracy"] = min(per_class)
                    samples["per_class_accuracy"] = per_class
            report["samples"] = samples
            # ---- layout, fidelity against diversity, and a two-sample test: what the two figures above cannot see
            sets = _reference_sets(dataset, recons, n_test, reference, classes_scored, opts.seed)
            sets["samples"] = ImageSet(images, sample_feats, asked)
            report |= beyond_texture(sets, clf, dev, opts, progress)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    path = Path(out) if out is not None else (Path(prior_run) if prior_run is not None else ae_dir) / EVAL_FILE
    for run in report["runs"].values():  # a --force run may have replaced a model while it was evaluated
        weights = Path(run["run"]) / ckpt.WEIGHTS
        if not weights.exists() or ckpt.sha256(weights) != run["sha256"]:
            raise VQGenError(
                f"'{run['run']}' was replaced while it was evaluated, so this report would describe a model that is "
                "gone; nothing was written: run vqgen eval again"
            )
    ckpt.save_json(path, report)
    return report, path


@dataclass
class ImageSet:
    """Images compared by the measures beyond texture, with what the eval classifier makes of them."""

    images: torch.Tensor  # (N, C, n, n) uint8
    features: torch.Tensor | None = None  # (N, F) the eval classifier's features; None where there is no classifier
    labels: torch.Tensor | None = None  # (N,) the class each image is, or was asked to be, where classes are scored


def _reference_sets(
    dataset: ImageData, recons: torch.Tensor, n_test: int, reference: dict | None, classes_scored: bool, seed: int = 0
) -> dict[str, ImageSet]:
    """The real sets every sample set is compared with: the first n_test held-out images, their reconstructions and
    a seeded draw of as many train images (the reference's own draw where the classifier ran)."""
    truth = dataset.test.labels[:n_test] if classes_scored else None
    if reference is None:
        draw = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(seed))[:n_test]
        return {
            "test": ImageSet(dataset.test.images[:n_test]),
            "reconstructions": ImageSet(recons),
            "train": ImageSet(dataset.train.images[draw]),
        }
    return {
        "test": ImageSet(dataset.test.images[:n_test], reference["test_features"], truth),
        "reconstructions": ImageSet(recons, reference["recon_features"], truth),
        "train": ImageSet(reference["train_images"], reference["train_features"]),
    }


def beyond_texture(
    sets: dict[str, ImageSet], clf: Classifier | None, dev: torch.device, opts: EvalOptions, progress=None
) -> dict:
    """The report sections `structure`, `fidelity_diversity` (both need the classifier) and `two_sample`, over the
    sets "test" (the reference), "train", "reconstructions" and, where there are samples, "samples".

    Structure: each set's class accuracy intact and with its patches shuffled, and how often the shuffle leaves the
    classifier's reading unchanged (which needs no labels). Fidelity and diversity: each set against the held-out
    images, and per class for class-conditional samples. Two-sample test: samples against reconstructions (what a
    perfect prior would reach) and against held-out images, or reconstructions against held-out images without
    samples; train against held-out images as the test's own noise."""
    from vqgen import measures

    out: dict = {}
    scored = [name for name in ("test", "reconstructions", "samples") if name in sets]
    if clf is not None:
        t0 = time.perf_counter()
        structure: dict = {"patch_grid": measures.PATCH_GRID, "seed": opts.seed}
        for name in scored:
            s = sets[name]
            shuffled = measures.shuffle_patches(s.images, measures.PATCH_GRID, opts.seed)
            _, preds = classifier_outputs(clf, shuffled, dev, opts.batch_size)
            with torch.no_grad():
                intact = clf.head(s.features.to(dev)).argmax(1).cpu()
            # needs no labels: an image whose class is carried by texture is read the same after the shuffle
            row = {"prediction_kept": float((preds == intact).double().mean())}
            if s.labels is not None:
                accuracy = float((intact == s.labels).double().mean())
                shuffled_accuracy = float((preds == s.labels).double().mean())
                row |= {
                    "class_accuracy": accuracy,
                    "shuffled_class_accuracy": shuffled_accuracy,
                    "gap": accuracy - shuffled_accuracy,
                }
            structure[name] = row
        structure["seconds"] = round(time.perf_counter() - t0, 2)
        out["structure"] = structure

        t0 = time.perf_counter()
        real = sets["test"]
        fd: dict = {
            "reference": f"test, n={len(real.images)}",
            "precision_recall_k": measures.PRECISION_RECALL_K,
            "density_coverage_k": measures.DENSITY_COVERAGE_K,
        }
        # as many of each set as there are held-out images: a k-NN radius shrinks as its set grows, so unequal sizes
        # would bias recall and coverage (the samples' first n cycle over the classes, so the cut keeps them uniform)
        n_real = len(real.features)
        fd["n"] = n_real
        for name in ("train", "reconstructions", "samples"):
            if name in sets:
                fd[name] = measures.fidelity_diversity(real.features, sets[name].features[:n_real])
        fake = sets.get("samples")
        if fake is not None and fake.labels is not None and real.labels is not None:
            per_class: dict[str, list] = {"precision": [], "recall": [], "density": [], "coverage": []}
            for c in range(int(real.labels.max()) + 1):
                real_c, fake_c = real.features[real.labels == c], fake.features[fake.labels == c]
                fake_c = fake_c[: len(real_c)]
                enough = min(len(real_c), len(fake_c)) > measures.DENSITY_COVERAGE_K
                scores = measures.fidelity_diversity(real_c, fake_c) if enough else {}
                for key, values in per_class.items():
                    values.append(scores.get(key))
            fd["samples_per_class"] = per_class
        fd["seconds"] = round(time.perf_counter() - t0, 2)
        out["fidelity_diversity"] = fd

    pairs = [("samples", "reconstructions"), ("samples", "test")] if "samples" in sets else []
    pairs = pairs or [("reconstructions", "test")]
    two: dict = {
        "network": f"a {measures.TWO_SAMPLE_WIDTH}-wide 4-stage convnet trained from scratch, "
        f"{opts.two_sample_steps} steps of {measures.TWO_SAMPLE_BATCH} on half of each set, scored on the other "
        "halves",
    }
    for a, b in [*pairs, ("train", "test")]:
        two[f"{a}_vs_{b}"] = measures.two_sample_test(
            sets[a].images,
            sets[b].images,
            dev,
            opts.seed,
            steps=opts.two_sample_steps,
            progress=progress,
            label=f"two-sample {a} vs {b}",
        )
    out["two_sample"] = two
    return out


def _check_labelled(data: ImageData, source: str) -> None:
    if data.train.labels is None or data.num_classes < 2:
        raise VQGenError(f"--features-from '{source}' has no labels, so it has no classifier; name a labelled set")


def _classifier_reference(
    report: dict,
    dataset: ImageData,
    dc: DataConfig,
    dev: torch.device,
    opts: EvalOptions,
    progress,
    recons: torch.Tensor,
    n_test: int,
) -> tuple[Classifier, dict]:
    """The data set's classifier (cached or trained; its held-out accuracy goes into report["classifier"]), or that
    of `opts.features_from`, and the figures every sample is compared against: the first n_test held-out images'
    features, the reconstructions' and the train images' Fréchet distances to them, and how often a class survives
    the autoencoder (with the data set's own classifier only)."""
    test = dataset.test
    root = classifier_root(dc.data_root if dc.data_root is not None else default_root())
    own, source = dataset, dc.data
    if opts.features_from is not None:
        c, size, _ = dataset.image_shape
        source = opts.features_from
        own = DataConfig(source, dc.data_root, size, c).load()
        _check_labelled(own, source)
    clf, clf_info = load_or_train_classifier(own, source, root, dev, opts.classifier_steps, progress)
    _, own_preds = classifier_outputs(clf, own.test.images, dev, opts.batch_size)
    report["classifier"] = {
        "data": own.name,
        "split": "test",
        "n": len(own.test),
        "accuracy": float((own_preds == own.test.labels).double().mean()),
        "features": clf.head.in_features,
        "path": clf_info["path"],
        "cached": clf_info["cached"],
        "train_steps": clf_info["steps"],
        "train_seconds": clf_info.get("train_seconds"),
    }
    test_feats, test_preds = classifier_outputs(clf, test.images[:n_test], dev, opts.batch_size)
    recon_feats, recon_preds = classifier_outputs(clf, recons, dev, opts.batch_size)
    # a seeded draw, not the first n_test: a folder's train split is in file order, one class after another
    draw = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(opts.seed))[:n_test]
    train_feats, _ = classifier_outputs(clf, dataset.train.images[draw], dev, opts.batch_size)
    reference = {
        "test_features": test_feats,
        "recon_features": recon_feats,
        "train_features": train_feats,
        "train_images": dataset.train.images[draw],
        "frechet_recon_vs_test": frechet_distance(recon_feats, test_feats),
        "frechet_train_vs_test": frechet_distance(train_feats, test_feats),
    }
    if opts.features_from is None:
        truth = test.labels[:n_test]
        reference["recon_class_accuracy"] = float((recon_preds == truth).double().mean())
        reference["original_class_accuracy"] = float((test_preds == truth).double().mean())
    return clf, reference


def report_rows(report: dict) -> dict[str, object]:
    """The figures of a report as (label → value) rows for a table, each label naming its split and size."""
    rows: dict[str, object] = {}
    rec = report.get("reconstruction")
    if rec:
        where = f"{rec['split']}, n={rec['n']}"
        rows[f"MSE ({where})"] = rec["mse"]
        rows[f"PSNR dB ({where})"] = rec["psnr"]
        rows[f"SSIM ({where})"] = rec["ssim"]
        rows[f"codes used, of K={rec['codebook_size']} ({where})"] = rec["codes_used"]
        rows[f"perplexity ({where})"] = rec["perplexity"]
        if "perplexity_top" in rec:
            rows[f"top grid: codes used ({where})"] = rec["codes_used_top"]
            rows[f"top grid: perplexity ({where})"] = rec["perplexity_top"]
        if "frechet_recon_vs_test" in rec:
            held_out = f"test n={rec['n_classified']}"
            rows[f"Fréchet distance: reconstructions vs {held_out}"] = rec["frechet_recon_vs_test"]
            rows[f"  noise: train images vs {held_out}"] = rec["frechet_train_vs_test"]
            if "recon_class_accuracy" in rec:
                rows[f"reconstructions keeping their class ({held_out})"] = rec["recon_class_accuracy"]
                rows[f"  originals classified right ({held_out})"] = rec["original_class_accuracy"]
    nll = report.get("likelihood")
    if nll:
        where = f"{nll['split']}, n={nll['n']}"
        both = ", top + bottom" if nll.get("levels") == 2 else ""
        rows[f"bits per code ({where}{both})"] = nll["bits_per_code"]
        rows[f"bits per image ({where}{both})"] = nll["bits_per_image"]
        rows[f"unigram entropy, bits per code ({nll['unigram_split']}, n={nll['unigram_n']})"] = nll[
            "unigram_bits_per_code"
        ]
    clf = report.get("classifier")
    if clf:
        whose = f"{clf['data']}, " if "data" in clf and clf["data"] != report["data"]["name"] else ""
        rows[f"classifier accuracy ({whose}{clf['split']}, n={clf['n']})"] = clf["accuracy"]
    s = report.get("samples")
    if s:
        if "frechet_samples_vs_test" in s:
            held_out = f"{s['split']} n={s['n_test']}"
            rows[f"Fréchet distance: samples (n={s['n']}) vs {held_out}"] = s["frechet_samples_vs_test"]
            rows[f"  floor: their reconstructions vs {held_out}"] = s["frechet_recon_vs_test"]
            rows[f"  noise: train images (n={s['n_test']}) vs {held_out}"] = s["frechet_train_vs_test"]
        if "class_accuracy" in s:
            rows[f"samples of the asked class (n={s['n']}, guidance {s.get('guidance')})"] = s["class_accuracy"]
            rows["  worst class"] = s["worst_class_accuracy"]
        if "recon_class_accuracy" in s:
            label = "  ceiling: reconstructions" if "class_accuracy" in s else "reconstructions"
            rows[f"{label} keeping their class ({s['split']} n={s['n_test']})"] = s["recon_class_accuracy"]
        rows[f"distinct sample grids (n={s['n']})"] = s["distinct_fraction"]
        rows[f"samples copying a train grid (n={s['n']}, {s['train_grids']} train grids)"] = s["train_copy_fraction"]
    return rows | _beyond_texture_rows(report)


SET_NAMES = {
    "test": "held-out images",
    "train": "train images",
    "reconstructions": "reconstructions",
    "samples": "samples",
}


def _beyond_texture_rows(report: dict) -> dict[str, object]:
    rows: dict[str, object] = {}
    structure = report.get("structure")
    if structure:
        k = structure["patch_grid"]
        for name in ("test", "reconstructions", "samples"):
            row = structure.get(name)
            if row is None:
                continue
            if "gap" in row:
                value = f"{row['class_accuracy']:.3f} → {row['shuffled_class_accuracy']:.3f} (gap {row['gap']:.3f})"
                rows[f"structure: {SET_NAMES[name]}: class, intact → {k}×{k} patches shuffled"] = value
            rows[f"structure: {SET_NAMES[name]} read as the same class after the shuffle"] = row["prediction_kept"]
    fd = report.get("fidelity_diversity")
    if fd:
        for name in ("train", "reconstructions", "samples"):
            if name in fd:
                f = fd[name]
                rows[f"precision / recall (k={fd['precision_recall_k']}): {SET_NAMES[name]} vs {fd['reference']}"] = (
                    f"{f['precision']:.3f} / {f['recall']:.3f}"
                )
                rows[f"density / coverage (k={fd['density_coverage_k']}): {SET_NAMES[name]} vs {fd['reference']}"] = (
                    f"{f['density']:.3f} / {f['coverage']:.3f}"
                )
        per_class = fd.get("samples_per_class")
        if per_class:
            recall = [r for r in per_class["recall"] if r is not None]
            if recall:
                rows["  samples' recall in the worst class / mean over classes"] = (
                    f"{min(recall):.3f} / {sum(recall) / len(recall):.3f}"
                )
    two = report.get("two_sample")
    if two:
        for key, result in two.items():
            if isinstance(result, dict):
                a, b = key.split("_vs_")
                label = f"two-sample accuracy: {SET_NAMES[a]} vs {SET_NAMES[b]} (n={result['n_test']} held out)"
                rows[label] = result["accuracy"]
    return rows


def report_notes(report: dict) -> list[str]:
    """One line per figure beyond texture that the report holds, saying what it means."""
    notes = []
    if "structure" in report:
        k = report["structure"]["patch_grid"]
        notes.append(
            f"structure: the class read from images intact and with their {k}×{k} patches shuffled; the gap is how "
            "much of the class the layout carries (texture survives the shuffle, layout does not); without labels, "
            "how often the shuffle leaves the classifier's reading unchanged (high: texture)"
        )
    if "fidelity_diversity" in report:
        notes.append(
            "precision: share of samples inside some held-out image's k-NN ball (fidelity); recall: share of held-out "
            "images inside some sample's ball (diversity); train images give the values of two draws of one set"
        )
        notes.append(
            "density: about 1 when samples fall where real images are as often as real ones do, above 1 when they "
            "crowd the common regions; coverage: share of held-out images with a sample in their k-NN ball"
        )
    if "two_sample" in report:
        notes.append(
            "two-sample accuracy: how often a network trained from scratch tells the two sets apart on images it "
            "did not train on; 0.5 means it cannot (train vs held-out images shows that level)"
        )
    return notes
