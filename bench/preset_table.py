"""Print the README's table of presets: each data set's defaults, read from vqgen/presets.py, beside the figures
measured with exactly those defaults, read from bench/results/*.json.

    python bench/preset_table.py

A figure is shown only where the JSON's recorded settings (K, steps, the adversarial weights, the prior's steps,
the guidance scale) equal the preset's; otherwise the cell says "not measured", so a changed preset never keeps the
old preset's numbers. tests/test_docs.py checks that README.md holds this script's current output.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

try:
    from vqgen.presets import LISTED, adversarial_text, listed_patch, listed_preset, stage_one_text, stage_two_text
except ImportError:  # run from a checkout without `pip install -e .`
    import sys

    sys.path.insert(0, str(REPO))
    from vqgen.presets import LISTED, adversarial_text, listed_patch, listed_preset, stage_one_text, stage_two_text


@dataclass
class Measured:
    """The figures of one preset, as one JSON records them, and the settings it recorded them with."""

    source: str  # bench/results/NAME.json
    settings: dict  # what the run used: codebook_size, ae_steps, adversarial, ..., prior_steps, guidance
    psnr: float | None = None
    recon_fid: float | None = None
    samples_fid: float | None = None
    class_accuracy: float | None = None
    seconds: tuple[float, float] | None = None  # train-ae, train-prior wall seconds
    machine: str = ""
    # guidance scale → (samples' distance, asked class) of the same prior: the recorded scale, and any of a sweep
    by_guidance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_guidance.setdefault(self.settings.get("guidance"), (self.samples_fid, self.class_accuracy))


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _machine(data: dict) -> str:
    cpu = data["machine"]["cpu"]
    short = "Intel Xeon" if "Xeon" in cpu else "AMD EPYC" if "EPYC" in cpu else cpu
    return f"{short}, {data['machine']['cores']} cores"


def from_datasets(name: str) -> Measured:
    """A bench/datasets.py result: the four commands with no flag but --data."""
    data = _load(name)
    fig = data["figures"]
    wall = {key.split(" ")[0]: value for key, value in fig["wall_seconds"].items()}
    overrides = r"--(steps|codebook-size|adversarial|ema-weights|guidance)\b"
    plain = all(not re.search(overrides, command) for command in fig["commands"])
    return Measured(
        source=f"bench/results/{name}.json",
        settings={
            "codebook_size": fig["codebook_size"],
            "ae_steps": fig["ae_steps"],
            "prior_steps": fig["prior_steps"],
            "prior_batch_size": fig["prior_batch"],
            "guidance": fig["guidance"],
            "preset_flags_only": plain,
        },
        psnr=fig["psnr"],
        recon_fid=fig["fid_recon_floor"],
        samples_fid=fig["fid_samples"],
        class_accuracy=fig["class_accuracy"],
        seconds=(wall["train-ae"], wall["train-prior"]),
        machine=_machine(data),
    )


def _flags(command: str) -> dict:
    words = shlex.split(command)
    return {w[2:]: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def from_natural(name: str, variant: str = "adversarial", sweeps: tuple[str, ...] = ()) -> Measured:
    """A bench/natural.py result: stage one with explicit flags, and the default prior on its codes; `sweeps` are
    bench/guidance.py results on that same prior, which add the samples' figures at their scales."""
    data = _load(name)
    row = data["figures"]["variants"][variant]
    flags = _flags(row["commands"][0])
    prior = row.get("prior")
    prior_flags = _flags(prior["commands"][1]) if prior else {}
    measured = Measured(
        source=f"bench/results/{name}.json",
        settings={
            "codebook_size": int(flags.get("codebook-size", 512)),
            "ae_steps": row["steps"],
            "ae_adversarial": float(flags.get("adversarial", 0)),
            "ae_adversarial_start": int(flags.get("adversarial-start", 0)),
            "ae_feature_matching": float(flags.get("feature-matching", 0)),
            "prior_default": bool(prior) and not ({"steps", "minutes", "batch-size", "lr"} & set(prior_flags)),
            "guidance": prior["guidance"] if prior else None,
        },
        psnr=row["psnr"],
        recon_fid=row["fid_recon_vs_test"],
        samples_fid=prior["fid_samples_vs_test"] if prior else None,
        class_accuracy=prior["class_accuracy"] if prior else None,
        seconds=(row["train_seconds"], prior["train_seconds"]) if prior else None,
        machine=_machine(data),
    )
    return _with_sweeps(measured, prior_flags.get("out"), sweeps)


def _with_sweeps(measured: Measured, prior: str | None, sweeps: tuple[str, ...]) -> Measured:
    """`measured` with the samples' figures of bench/guidance.py results `sweeps` on its prior run folder `prior`."""
    for sweep in sweeps:
        fig = _load(sweep)["figures"]
        if fig["prior"] != prior:
            raise ValueError(f"{sweep}.json swept {fig['prior']}, not the prior of {measured.source}")
        measured.by_guidance.update({s["guidance"]: (s["fid"], s["class_accuracy"]) for s in fig["scales"]})
    return measured


def from_factorised(name: str, arm: str) -> Measured:
    """A bench/factorised.py arm: stage one with explicit flags, the prior with fixed steps, both evaluated."""
    data = _load(name)
    row = data["figures"]["arms"][arm]
    flags, prior_flags = _flags(row["commands"][0]), _flags(row["commands"][2])
    return Measured(
        source=f"bench/results/{name}.json",
        settings={
            "codebook_size": row["codebook_size"],
            "ae_steps": row["ae_steps"],
            "ae_adversarial": float(flags.get("adversarial", 0)),
            "ae_adversarial_start": int(flags.get("adversarial-start", 0)),
            "ae_feature_matching": float(flags.get("feature-matching", 0)),
            "prior_steps": int(prior_flags["steps"]),
            "prior_batch_size": int(prior_flags.get("batch-size", 64)),
            "guidance": row["guidance"],
        },
        psnr=row["psnr"],
        recon_fid=row["fid_recon_vs_test"],
        samples_fid=row["fid_samples_vs_test"],
        class_accuracy=row["class_accuracy"],
        seconds=(row["ae_seconds"], row["prior_seconds"]),
        machine=_machine(data),
    )


def from_folders(name: str, sweeps: tuple[str, ...] = ()) -> Measured:
    """A bench/folders.py result: a folder through the four commands with no flag but --data; `sweeps` as for
    `from_natural`."""
    data = _load(name)
    fig = data["figures"]
    chosen = fig["chosen"]
    prior = next(_flags(c)["out"] for c in fig["commands"] if c.startswith("vqgen train-prior"))
    measured = Measured(
        source=f"bench/results/{name}.json",
        settings={
            "codebook_size": chosen["codebook_size"],
            "ae_steps": chosen["ae_steps"],
            "ae_adversarial": chosen["adversarial"],
            "prior_steps": chosen["prior_steps"],
            "prior_batch_size": chosen["prior_batch_size"],
            "guidance": chosen["guidance"],
        },
        psnr=fig["psnr"],
        recon_fid=fig["fid_recon_vs_test"],
        samples_fid=fig["fid_samples_vs_test"],
        class_accuracy=fig.get("class_accuracy"),
        seconds=(fig["ae_seconds"], fig["prior_seconds"]),
        machine=_machine(data),
    )
    return _with_sweeps(measured, prior, sweeps)


# Which JSON measured which preset (keys of vqgen.presets.LISTED). Each is checked against the preset first.
MEASURED = {
    "shapes": lambda: from_datasets("dataset-shapes"),
    "mnist": lambda: from_datasets("dataset-mnist"),
    "plain": lambda: from_datasets("dataset-fashion-mnist"),
    "cifar10": lambda: from_natural("natural-cifar10-k2048-avx2", sweeps=("guidance-cifar10-flat",)),
    "large": lambda: from_folders("folder-tinyimagenet20"),
}


def matches(preset, m: Measured) -> tuple[bool, bool]:
    """(stage one matches, stage two matches): the JSON's recorded settings against the preset's."""
    s = m.settings
    one = s["codebook_size"] == preset.codebook_size and s["ae_steps"] == preset.ae_steps
    for key in ("ae_adversarial", "ae_adversarial_start", "ae_feature_matching"):
        if key in s:
            one = one and s[key] == getattr(preset, key)
    if "preset_flags_only" in s:
        one = one and s["preset_flags_only"] and preset.ae_adversarial == 0
    two = one and preset.prior_guidance in m.by_guidance
    if "prior_steps" in s:
        two = two and s["prior_steps"] == preset.prior_steps and s["prior_batch_size"] == preset.prior_batch_size
    if "prior_default" in s:
        two = two and s["prior_default"]
    return one, two


def _minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def table() -> str:
    head = (
        "| data set | stage one | adversarial | stage two | guidance | held-out PSNR | reconstructions' distance "
        "| samples' distance | samples of the asked class | train-ae + train-prior | measured on |"
    )
    lines = [head, "| " + " | ".join(["---"] * 11) + " |"]
    na = "not measured"
    for key, label in LISTED.items():
        preset = listed_preset(key)
        try:
            m = MEASURED[key]()
        except FileNotFoundError:  # no run of this preset yet
            m = None
        one, two = matches(preset, m) if m is not None else (False, False)
        samples_fid, class_accuracy = m.by_guidance[preset.prior_guidance] if two else (None, None)
        cells = [
            label,
            stage_one_text(preset),
            adversarial_text(preset),
            stage_two_text(preset, listed_patch(key)),
            str(preset.prior_guidance) if preset.prior_guidance else "none",
            f"{m.psnr:.2f} dB" if one else na,
            f"{m.recon_fid:.2f}" if one else na,
            f"{samples_fid:.2f}" if two and samples_fid is not None else na,
            f"{100 * class_accuracy:.1f}%" if two and class_accuracy is not None else na,
            f"{_minutes(m.seconds[0])} + {_minutes(m.seconds[1])}" if two and m.seconds else na,
            f"{m.machine}: [{Path(m.source).name}]({m.source})" if m is not None and one else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The sweeps of bench/guidance.py that measured what the samples are beyond texture, per data set, and the prior
# each swept; a row shows the scale its preset records (Flowers64: unlabelled, one unguided eval in bench/folders.py).
BEYOND_TEXTURE = [
    ("shapes (built in)", "shapes", "guidance-shapes-rule"),
    ("MNIST", "mnist", "guidance-mnist-rule"),
    ("CIFAR-10", "cifar10", "guidance-cifar10"),
    ("TinyImageNet20 (64 px)", "large", "guidance-tinyimagenet20"),
]


def _pair(a: float | None, b: float | None, percent: bool = False) -> str:
    if a is None or b is None:
        return "not measured"
    return f"{100 * a:.1f}% / {100 * b:.1f}%" if percent else f"{a:.2f} / {b:.2f}"


def beyond_texture_table() -> str:
    """The README's table of the measures that see layout and diversity, at each preset's guidance scale."""
    from vqgen.presets import choose_guidance

    head = (
        "| data set | guidance (rule's choice) | asked class | structure gap: samples / held-out images "
        "| precision / recall: samples | recall: reconstructions | two-sample accuracy: samples vs reconstructions "
        "/ vs held-out | JSON |"
    )
    lines = [head, "| " + " | ".join(["---"] * 8) + " |"]
    rows = [(label, listed_preset(key).prior_guidance, name) for label, key, name in BEYOND_TEXTURE]
    for label, guidance, name in rows:
        try:
            fig = _load(name)["figures"]
        except FileNotFoundError:
            continue
        at = {r["guidance"]: r for r in fig["scales"]}
        r = at.get(guidance)
        figures = ["not measured"] * 5  # the preset's scale was not among the sweep's
        if r is not None:
            figures = [
                f"{100 * r['class_accuracy']:.1f}%",
                _pair(r["structure_gap_samples"], r["structure_gap_test"]),
                _pair(r["precision_samples"], r["recall_samples"]),
                f"{r['recall_reconstructions']:.2f}",
                _pair(r["two_sample_samples_vs_reconstructions"], r["two_sample_samples_vs_test"], percent=True),
            ]
        chosen = choose_guidance(fig["scales"])
        cells = [label, f"{guidance:g} ({chosen:g})", *figures, f"[{name}.json](bench/results/{name}.json)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
    print()
    print(beyond_texture_table(), end="")
