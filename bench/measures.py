"""What the measures of `vqgen eval` see on real images alone: the sanity checks behind docs/results.md, "What the
measures see".

    python bench/measures.py --data ../shared/datasets/TinyImageNet20
    python bench/measures.py --data ../shared/datasets/CIFAR10/cifar10-train-40k.npz

With the data set's cached eval classifier (trained first if there is none, as `vqgen eval` does):
- the share of held-out photos classified right when their k×k patches are shuffled, k = 1, 2, 4, 8: how much of
  what the classifier reads is texture (it keeps reading the class) and how much layout;
- precision, recall (k = 3), density and coverage (k = 5) of train images against held-out ones: the values two draws
  of one distribution give;
- the two-sample test on train against held-out images (three seeds: should read 50%), on held-out images against
  uniform noise (should read 100%) and on held-out images against their own 4×4-shuffled copies.
Writes bench/results/<name>.json (default measures-<data>), with the seconds each measure took.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from vqgen import measures
from vqgen.autoencoder import DataConfig
from vqgen.classifier import classifier_outputs, classifier_root, load_or_train_classifier
from vqgen.data import default_root

from common import REPO, command_line, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a labelled data set, as for vqgen train-ae --data")
    parser.add_argument("--data-root", default=None, help="as for vqgen eval --data-root")
    parser.add_argument("--n", type=int, default=5000, help="held-out images (at most the split's size)")
    parser.add_argument("--name", default=None, help="results file name (default: measures-<data>)")
    args = parser.parse_args()
    command = command_line("measures.py", args)
    os.chdir(REPO)
    data = DataConfig(args.data, args.data_root).load()
    root = classifier_root(args.data_root or default_root())
    device = torch.device("cpu")
    clf, info = load_or_train_classifier(data, args.data, root, device)
    n = min(args.n, len(data.test))
    real, truth = data.test.images[:n], data.test.labels[:n]
    draw = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n]
    train = data.train.images[draw]
    figures: dict = {"data": args.data, "n": n, "classifier": {k: info.get(k) for k in ("path", "cached", "steps")}}

    t0 = time.perf_counter()
    shuffled_accuracy = {}
    for k in (1, 2, 4, 8):
        _, preds = classifier_outputs(clf, measures.shuffle_patches(real, k, seed=0), device)
        shuffled_accuracy[str(k)] = round(float((preds == truth).double().mean()), 4)
    figures["class_accuracy_by_patch_grid"] = shuffled_accuracy
    figures["chance"] = round(1 / data.num_classes, 4)
    figures["shuffle_seconds"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    real_features, _ = classifier_outputs(clf, real, device)
    train_features, _ = classifier_outputs(clf, train, device)
    figures["train_vs_test"] = {
        k: round(v, 4) for k, v in measures.fidelity_diversity(real_features, train_features).items()
    }
    figures["fidelity_diversity_seconds"] = round(time.perf_counter() - t0, 2)

    two = {}
    for seed in (0, 1, 2):
        result = measures.two_sample_test(train, real, device, seed=seed)
        two[f"train_vs_test_seed{seed}"] = {k: result[k] for k in ("accuracy", "null_standard_error", "seconds")}
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = measures.two_sample_test(real, noise, device)
    two["test_vs_noise"] = {k: result[k] for k in ("accuracy", "seconds")}
    result = measures.two_sample_test(real, measures.shuffle_patches(real, measures.PATCH_GRID, seed=1), device)
    two["test_vs_shuffled_test"] = {k: result[k] for k in ("accuracy", "seconds")}
    figures["two_sample"] = two
    print(figures)
    write_result(args.name or f"measures-{Path(args.data).stem.lower()}", command, figures)


if __name__ == "__main__":
    main()
