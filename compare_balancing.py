"""Compare the ways of balancing D and G on the same data, seed and image budget.

Trains five configurations with train_lfw.py, in-process and one after the other:

    A  batch norm in D, no balancing       --bnD --balance none
    B  margin balancing                    --balance margin
    C  adaptive L2 penalty on D, at --lrC times the base learning rate
                                           --balance l2 --learningRate <base x lrC>
    D  both heuristics                     --balance margin+l2
    E  neither heuristic                   --balance none

Only A has batch norm in D. E differs from A by batch norm alone and from B and D by the
heuristics alone, so each effect can be read apart from the batch-norm change. C differs
from E by the L2 heuristic and the learning rate together. All runs share the seed, the
other options and the image budget, and evaluate samples with --evalEvery.

Reads the LFW data given by --data (archive, extracted folder or HDF5 cache, as in
data_lfw.py). Writes into --out:

- one folder per run with train_lfw.py's log.csv, epochs.csv, eval.csv, sample grids and
  checkpoint, plus compare_run.json with the run's options, which --reuse checks;
- monitor_<letters>.png, the plot_monitor.py panels of the runs side by side;
- quality.png, swd_avg against training time and against real images seen;
- balancing.md, a table of final errors, skipped updates, coefL2_D, training time and
  sample metrics, the real-vs-real reference metrics, sentences that name the best run
  per measure, the command line and the machine.

    python compare_balancing.py --data data/lfw_crop50_64.hdf5 --preset cpu
    python compare_balancing.py --data lfw-deepfunneled.tgz --preset gpu --gpu 0
    python compare_balancing.py --data ... --reuse --only A,C -- --threads 2

Options after "--" are passed to every train_lfw.py run, after the preset's options, so
they override them. The report covers the runs selected with --only. Run again with
--reuse and without --only to get the report of all five runs without retraining.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Render to files only, so the script runs without a display.

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data_lfw  # noqa: E402
import metrics  # noqa: E402
import plot_monitor  # noqa: E402
import train_lfw  # noqa: E402

LETTERS = "ABCDE"
RECORD_NAME = "compare_run.json"
REPORT_NAME = "balancing.md"
QUALITY_NAME = "quality.png"
FINAL_SHARE = 0.1  # final errors are the mean over this share of the last batches
CHANCE_ERROR = math.log(2)  # BCE of every error when D outputs 0.5 for every image

# train_lfw.py options that this script sets per run. "dest" names, as argparse stores them.
OWN_OPTIONS = {
    "bnD": "it is what separates A from the other runs",
    "balance": "it is what the runs compare",
    "save": "use --out",
    "network": "use --reuse to resume runs",
    "data": "use --data before --",
    "gpu": "use --gpu before --",
}


@dataclass(frozen=True)
class Preset:
    """train_lfw.py options shared by all runs, the base learning rate and the default --gpu.

    The learning rate is kept apart because each run sets its own --learningRate.
    """

    train_args: tuple[str, ...]
    learning_rate: float
    gpu: int


PRESETS = {
    # The whole comparison in about an hour on 2 CPU cores, so about 12 minutes per run.
    # The budget of 8 epochs of 6400 real images (51,200) was sized from the measured
    # speed of this configuration with train_lfw.py on 2 cores of an Intel Xeon. It
    # trained about 70 real images/s (12,992 in 188 s) and took 15 s per evaluation of
    # 1000 samples. That estimates 740 s of training and 60 s of evaluation per run,
    # 67 minutes in all.
    "cpu": Preset(
        train_args=(
            "--scale", "64", "--ngf", "48", "--ndf", "16", "--batchSize", "64",
            "--precision", "bf16", "--channelsLast", "--optimizer", "rmsprop", "--seed", "1",
            "--epochSize", "6400", "--epochs", "8", "--evalEvery", "2", "--evalSamples", "1000",
        ),
        learning_rate=0.001,
        gpu=-1,
    ),
    # The reference configuration of train_lfw.py at 64 px, every training image per epoch.
    "gpu": Preset(
        train_args=(
            "--scale", "64", "--ngf", "128", "--ndf", "32", "--batchSize", "128",
            "--precision", "fp32", "--optimizer", "rmsprop", "--seed", "1",
            "--epochs", "25", "--evalEvery", "5", "--evalSamples", "1000",
        ),
        learning_rate=0.001,
        gpu=0,
    ),
    # Seconds per run, for tests on a cache of about 64 images of 32 px.
    "tiny": Preset(
        train_args=(
            "--scale", "32", "--ngf", "8", "--ndf", "4", "--noiseDim", "16", "--batchSize", "8",
            "--optimizer", "rmsprop", "--seed", "1", "--nval", "8",
            "--epochSize", "32", "--epochs", "2", "--evalEvery", "1", "--evalSamples", "32",
        ),
        learning_rate=0.001,
        gpu=-1,
    ),
}


class CompareError(Exception):
    """Invalid options or run folders. The message names the value and the fix."""


@dataclass
class RunSpec:
    """One configuration: its letter, title, folder and full train_lfw.py arguments."""

    letter: str
    title: str
    folder: Path
    train_args: list[str]
    options: argparse.Namespace


@dataclass
class RunResult:
    """Outcome of one run and the numbers read back from its CSV files."""

    spec: RunSpec
    status: str  # "trained", "resumed", "reused" or "failed"
    exit_code: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status != "failed" and self.summary.get("epochs") == self.spec.options.epochs


# ---------------------------------------------------------------------------
# Options and run specifications


def parse_args(argv):
    """Split argv at the first "--" and parse the part before it.

    Returns the parsed options and the train_lfw.py options after "--".
    """
    if "--" in argv:
        split = argv.index("--")
        own, extras = argv[:split], argv[split + 1 :]
    else:
        own, extras = argv, []
    parser = argparse.ArgumentParser(
        description="Train the GAN with batch norm in D and with each balancing heuristic "
        "(runs A-E) on the same data and budget, then plot and tabulate the results. "
        "Options after -- go to every train_lfw.py run.",
    )
    parser.add_argument("--data", required=True,
                        help="LFW archive (.tgz), extracted folder or HDF5 cache")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="image size, network widths, precision and image budget "
                        "(default: cpu)")
    parser.add_argument("--out", type=Path, default=Path("runs/balancing"),
                        help="folder for the run folders, figures and balancing.md "
                        "(default: runs/balancing)")
    parser.add_argument("--gpu", type=int, default=None,
                        help="CUDA device index, -1 for the CPU (default: -1 for the cpu and "
                        "tiny presets, 0 for gpu)")
    parser.add_argument("--only", default=",".join(LETTERS),
                        help="comma-separated runs to train and report, e.g. A,C "
                        "(default: all five)")
    parser.add_argument("--lrC", type=float, default=2.0,
                        help="factor on the base learning rate for run C (default: 2)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip runs whose folder has a finished run with the same options "
                        "and resume interrupted ones from their checkpoint")
    args = parser.parse_args(own)
    args.letters = parse_letters(args.only)
    if not args.lrC > 0:
        parser.error(f"invalid --lrC {args.lrC}: use a factor > 0, e.g. 2")
    return args, extras


def parse_letters(text):
    """Return the run letters of --only in A-E order, e.g. "c, a" -> ["A", "C"]."""
    letters = {item.strip().upper() for item in text.replace(",", " ").split()}
    unknown = sorted(letters - set(LETTERS))
    if unknown or not letters:
        raise CompareError(
            f"invalid --only {text!r}: use comma-separated letters from {','.join(LETTERS)}"
        )
    return [letter for letter in LETTERS if letter in letters]


def check_extra_options(extras):
    """Raise CompareError if the train_lfw.py options after "--" set a per-run option."""
    _, explicit = train_lfw.parse_options(extras)
    for name in sorted(explicit & set(OWN_OPTIONS)):
        raise CompareError(
            f"--{name} after -- is not allowed because this script sets it per run: "
            f"{OWN_OPTIONS[name]}"
        )


def format_number(value):
    """Format a learning rate for a command line: 0.002, 2e-05."""
    return f"{value:.6g}"


def configurations(base_lr, lr_factor, optimizer):
    """Return (letter, folder name, title, per-run train_lfw.py arguments) of runs A-E."""
    base = ["--learningRate", format_number(base_lr)]
    fast = ["--learningRate", format_number(base_lr * lr_factor)]
    return [
        ("A", "A_bnD_none", "A: BN in D, no balancing", ["--bnD", "--balance", "none", *base]),
        ("B", "B_margin", "B: margin balancing", ["--balance", "margin", *base]),
        ("C", "C_l2_fast",
         f"C: adaptive L2, {optimizer} at lr {format_number(base_lr * lr_factor)}",
         ["--balance", "l2", *fast]),
        ("D", "D_margin_l2", "D: margin + adaptive L2", ["--balance", "margin+l2", *base]),
        ("E", "E_none", "E: no BN, no balancing", ["--balance", "none", *base]),
    ]


def build_run_specs(args, extras, cache):
    """Return the RunSpec of each selected run, with its options parsed and validated."""
    preset = PRESETS[args.preset]
    gpu = preset.gpu if args.gpu is None else args.gpu
    shared = [*preset.train_args, *extras]
    base, explicit = train_lfw.parse_options(shared)
    # A --learningRate after -- replaces the preset's base rate, and C still gets lrC x it.
    base_lr = base.learningRate if "learningRate" in explicit else preset.learning_rate
    specs = []
    for letter, folder_name, title, run_args in configurations(
        base_lr, args.lrC, base.optimizer
    ):
        if letter not in args.letters:
            continue
        folder = args.out / folder_name
        train_args = ["--data", str(cache), "-s", str(folder), "--gpu", str(gpu),
                      *shared, *run_args]
        options, _ = train_lfw.parse_options(train_args)
        try:
            train_lfw.validate_options(options)
        except train_lfw.TrainingError as error:
            raise CompareError(f"run {letter}: {error}") from error
        if not options.evalEvery:
            raise CompareError(
                "--evalEvery 0 leaves eval.csv empty, and the comparison needs its "
                "quality curve: pass --evalEvery N >= 1 after --"
            )
        specs.append(RunSpec(letter, title, folder, train_args, options))
    return specs


# ---------------------------------------------------------------------------
# Training and reuse


def comparable_options(options):
    """Return the options of a run as a JSON-ready dict that --reuse compares."""
    values = dict(vars(options))
    values.pop("save")
    values["data"] = str(Path(values["data"]).resolve())
    return values


def write_record(spec):
    record = {"train_args": spec.train_args, "options": comparable_options(spec.options)}
    (spec.folder / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")


def count_csv_rows(path):
    """Return the data rows of a CSV file, 0 when it is missing or empty."""
    if not path.is_file():
        return 0
    with open(path, newline="") as file:
        return max(sum(1 for row in csv.reader(file) if row) - 1, 0)


def reuse_state(spec):
    """Return "finished", "partial" or "none" for a folder that --reuse may skip or resume.

    Raises CompareError when the folder has a run with other options, or a run that
    compare_balancing.py did not start, because its results would not be comparable.
    """
    record_path = spec.folder / RECORD_NAME
    if not record_path.is_file():
        if (spec.folder / "log.csv").is_file():
            raise CompareError(
                f"{spec.folder} has a run without {RECORD_NAME}, so its options are "
                f"unknown: delete the folder, pick another --out or drop --reuse"
            )
        return "none"
    try:
        recorded = json.loads(record_path.read_text())["options"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CompareError(
            f"invalid {record_path} ({error}): delete the folder, pick another --out or "
            f"drop --reuse"
        ) from error
    expected = comparable_options(spec.options)
    differing = sorted(
        name for name in set(recorded) | set(expected) if recorded.get(name) != expected.get(name)
    )
    if differing:
        details = ", ".join(
            f"--{name} {recorded.get(name)!r} there, {expected.get(name)!r} now"
            for name in differing
        )
        raise CompareError(
            f"--reuse: the run in {spec.folder} has other options ({details}): delete the "
            f"folder, pick another --out or drop --reuse to retrain"
        )
    if count_csv_rows(spec.folder / "epochs.csv") == spec.options.epochs:
        return "finished"
    if (spec.folder / train_lfw.CHECKPOINT_NAME).is_file():
        return "partial"
    return "none"


def run_training(spec, state):
    """Train, resume or reuse one run, and return its status and train_lfw.py's exit code.

    state is what reuse_state returned, or "none" to train from scratch.
    """
    if state == "finished":
        print(f"<compare> {spec.title}: reusing the finished run in {spec.folder}", flush=True)
        return "reused", 0

    argv = list(spec.train_args)
    status = "trained"
    if state == "partial":
        checkpoint = spec.folder / train_lfw.CHECKPOINT_NAME
        argv += ["--network", str(checkpoint)]
        status = "resumed"
        print(f"<compare> {spec.title}: resuming from {checkpoint}", flush=True)
    spec.folder.mkdir(parents=True, exist_ok=True)
    write_record(spec)
    print(f"<compare> starting {spec.title} in {spec.folder}", flush=True)
    print(f"<compare> python train_lfw.py {shlex.join(argv)}", flush=True)
    try:
        exit_code = train_lfw.main(argv)
    except SystemExit:
        # train_lfw.py exits this way on SIGINT or SIGTERM, after writing a checkpoint.
        print(f"<compare> {spec.title} was stopped; rerun with --reuse to resume it",
              flush=True)
        raise
    return (status if exit_code == 0 else "failed"), exit_code


# ---------------------------------------------------------------------------
# Reading the results


def read_numeric_csv(path):
    """Read a CSV into a dict of float arrays per column. Empty fields become NaN."""
    if not path.is_file():
        return {}
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return {}
    columns = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        columns[name] = np.array([float(v) if v not in ("", None) else math.nan for v in values])
    return columns


def summarize_run(folder):
    """Return the final errors, skip shares, coefL2_D, times and metrics of one run folder.

    Missing files leave their keys out, so a run that failed early is summarized as far
    as it got.
    """
    summary = {"epochs": count_csv_rows(folder / "epochs.csv")}
    log_path = folder / "log.csv"
    if log_path.is_file() and count_csv_rows(log_path) > 0:
        log = plot_monitor.read_log(log_path)
        batches = len(log["iteration"])
        tail = max(1, math.ceil(FINAL_SHARE * batches))
        summary["batches"] = batches
        summary["final_batches"] = tail
        for name in ("err_gen", "err_fake", "err_real"):
            summary[name] = float(np.mean(log[name][-tail:]))
        summary["error_distance"] = float(np.mean(
            [abs(summary[name] - CHANCE_ERROR) for name in ("err_gen", "err_fake", "err_real")]
        ))
        summary["skipped_D"] = float(np.mean(log["optimize_D"] == 0))
        summary["skipped_G"] = float(np.mean(log["optimize_G"] == 0))
        summary["skipped"] = (summary["skipped_D"] + summary["skipped_G"]) / 2
        summary["coefL2_D"] = float(log["coefL2_D"][-1])
        summary["train_s"] = float(log["time_s"][-1])

    evaluations = read_numeric_csv(folder / "eval.csv")
    if evaluations:
        summary["eval"] = evaluations
        for name in ("swd_avg", "face_rate", "diversity", "images_seen"):
            summary[name] = float(evaluations[name][-1])
        summary["eval_epoch"] = int(evaluations["epoch"][-1])
        swd = evaluations["swd_avg"]
        if np.isfinite(swd).any():
            best = int(np.nanargmin(swd))
            summary["best_swd"] = float(swd[best])
            summary["best_swd_epoch"] = int(evaluations["epoch"][best])
        summary["eval_s"] = float(np.nansum(evaluations["eval_s"]))
    return summary


def compute_reference(cache, count, seed):
    """Return the real-vs-real metrics of two disjoint sets of `count` cache images, or None.

    The first set is the one train_lfw.py draws as the real images of its evaluations
    (the first `count` of a permutation seeded with --seed), the second the next `count`
    images of that permutation. Returns None when the cache has fewer than 2 x count.
    """
    data = torch.from_numpy(data_lfw.load_uint8(cache))
    if len(data) < 2 * count:
        return None
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    real_a = data[pick[:count]]
    real_b = data[pick[count : 2 * count]]
    return metrics.reference_values(real_a, real_b, seed=seed)


# ---------------------------------------------------------------------------
# Figures


def plot_quality(results, reference, out_path):
    """Plot swd_avg against training time and against real images seen, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained", sharey=True)
    for result in results:
        evaluations = result.summary.get("eval")
        if not evaluations:
            continue
        for ax, x_name in zip(axes, ("time_s", "images_seen")):
            ax.plot(evaluations[x_name], evaluations["swd_avg"], marker="o",
                    label=result.spec.title)
    if reference is not None:
        for ax in axes:
            ax.axhline(reference["swd_avg"], color="0.3", linestyle="--", linewidth=1,
                       label="real vs real")
    axes[0].set_xlabel("training time (s, evaluations excluded)")
    axes[1].set_xlabel("real images seen")
    axes[0].set_ylabel("swd_avg (x1000, lower is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


# ---------------------------------------------------------------------------
# Sentences generated from the numbers


@dataclass(frozen=True)
class Measure:
    """A summary value that ranks the runs, with how to show and compare it."""

    key: str
    label: str  # e.g. "Lowest final SWD"
    lower_is_better: bool
    digits: int
    difference: str  # "percent" (relative) or "points" (percentage points of a share)
    scale: float = 1.0  # factor for display, 100 for shares shown in %
    unit: str = ""


def show(value, measure):
    return f"{value * measure.scale:.{measure.digits}f}{measure.unit}"


def rank_sentence(results, measure):
    """Return "<label>: X (v), n% below Y (v)." from the finished runs' values.

    Runs whose values print the same are reported as a tie, so the sentence never
    claims a difference that the shown digits do not contain.
    """
    values = [(r.spec.letter, r.summary.get(measure.key)) for r in results]
    values = [(letter, v) for letter, v in values if v is not None and math.isfinite(v)]
    if not values:
        return f"{measure.label}: no finished run has a value."
    values.sort(key=lambda item: item[1] if measure.lower_is_better else -item[1])
    best_text = show(values[0][1], measure)
    winners = sorted(letter for letter, v in values if show(v, measure) == best_text)
    others = [(letter, v) for letter, v in values if show(v, measure) != best_text]
    if len(winners) > 1:
        head = f"{measure.label}: {join_names(winners)} tie at {best_text}"
    else:
        head = f"{measure.label}: {winners[0]} ({best_text})"
    if not others and len(winners) > 1:
        return head + "."
    if not others:
        return head + ", the only finished run."
    runner_letter, runner = others[0]
    difference = difference_text(values[0][1], runner, measure)
    return f"{head}, {difference} {runner_letter} ({show(runner, measure)})."


def join_names(names):
    """Return "A", "A and B" or "A, B and C"."""
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def difference_text(best, runner, measure):
    """Return e.g. "18% below" or "12.0 percentage points above" for best against runner."""
    direction = "below" if measure.lower_is_better else "above"
    if measure.difference == "points":
        points = abs(best - runner) * 100
        return f"{points:.1f} percentage points {direction}"
    if runner == 0:
        return f"{direction}"
    percent = abs(runner - best) / abs(runner) * 100
    digits = 1 if percent < 1 else 0
    return f"{percent:.{digits}f}% {direction}"


def measures(reference):
    """Return the ranking measures, with diversity judged by its distance from real images."""
    diversity_target = reference["diversity"] if reference is not None else 1.0
    return [
        Measure("swd_avg", "Lowest final SWD", True, 1, "percent"),
        Measure("best_swd", "Lowest SWD at any evaluation", True, 1, "percent"),
        Measure("face_rate", "Highest final face-detection rate", False, 1, "points",
                scale=100, unit="%"),
        Measure("diversity_distance",
                f"Final diversity closest to the real-vs-real value {diversity_target:.3f} "
                f"(absolute difference)", True, 3, "percent"),
        Measure("error_distance",
                f"Final smoothed errors closest to ln 2 = {CHANCE_ERROR:.3f}, the value when "
                f"D outputs 0.5 for every image (mean absolute difference of err_gen, "
                f"err_fake and err_real)", True, 3, "percent"),
        Measure("skipped", "Fewest skipped updates (mean of the D and G shares)", True, 1,
                "points", scale=100, unit="%"),
        Measure("train_s", "Shortest training time", True, 1, "percent", unit=" s"),
    ]


def add_diversity_distance(results, reference):
    target = reference["diversity"] if reference is not None else 1.0
    for result in results:
        value = result.summary.get("diversity")
        if value is not None and math.isfinite(value):
            result.summary["diversity_distance"] = abs(value - target)


def effect_sentences(results):
    """Compare A, B, C and D with E, the run without batch norm in D and without balancing."""
    by_letter = {r.spec.letter: r for r in results if r.finished}
    if "E" not in by_letter:
        return ["E did not finish or was not run, so no effect is measured against it."]
    base = by_letter["E"].summary
    changes = {
        "A": "Batch norm in D (A against E)",
        "B": "Margin balancing (B against E)",
        "C": "Adaptive L2 with the higher learning rate (C against E; both changed, so "
             "their shares of the effect are not separated)",
        "D": "Both heuristics (D against E)",
    }
    sentences = []
    for letter, label in changes.items():
        if letter not in by_letter:
            continue
        run = by_letter[letter].summary
        parts = [
            compare_values("final SWD", run.get("swd_avg"), base.get("swd_avg"), 1),
            compare_values("face-detection rate", run.get("face_rate"), base.get("face_rate"),
                           3),
            compare_values("distance of the final errors from ln 2", run.get("error_distance"),
                           base.get("error_distance"), 3),
        ]
        sentences.append(f"{label}: " + "; ".join(parts) + ".")
    return sentences


def compare_values(name, value, base, digits):
    """Return e.g. "final SWD 45.0 against 40.1 (12% higher)"."""
    if value is None or base is None or not (math.isfinite(value) and math.isfinite(base)):
        return f"{name} not available"
    text = f"{name} {value:.{digits}f} against {base:.{digits}f}"
    if f"{value:.{digits}f}" == f"{base:.{digits}f}":
        return text + " (equal at the shown digits)"
    if base == 0:
        return text
    percent = (value - base) / abs(base) * 100
    word = "higher" if percent > 0 else "lower"
    return text + f" ({abs(percent):.0f}% {word})"


# ---------------------------------------------------------------------------
# Report


def cpu_model():
    """Return the CPU model from /proc/cpuinfo, or platform's processor name."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_lines(gpu):
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}",
    ]
    if gpu >= 0 and torch.cuda.is_available() and gpu < torch.cuda.device_count():
        lines.append(f"- GPU {gpu}: {torch.cuda.get_device_name(gpu)}")
    else:
        lines.append("- Training device: CPU")
    return lines


def cell(summary, key, digits, scale=1.0, suffix=""):
    value = summary.get(key)
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}{suffix}"


TABLE_COLUMNS = (
    "Run", "Status", "Epochs", "err_gen", "err_fake", "err_real", "Skipped D", "Skipped G",
    "coefL2_D", "Train time (s)", "swd_avg", "face_rate", "diversity", "Best swd_avg (epoch)",
)


def table_row(result):
    """Return the cells of one run's row in balancing.md, in TABLE_COLUMNS order."""
    summary = result.summary
    status = result.status if result.exit_code == 0 else f"failed (exit {result.exit_code})"
    coef = summary.get("coefL2_D")
    best = cell(summary, "best_swd", 1)
    if best != "-":
        best += f" ({summary['best_swd_epoch']})"
    return [
        result.spec.title,
        status,
        f"{summary.get('epochs', 0)}/{result.spec.options.epochs}",
        cell(summary, "err_gen", 3),
        cell(summary, "err_fake", 3),
        cell(summary, "err_real", 3),
        cell(summary, "skipped_D", 1, 100, "%"),
        cell(summary, "skipped_G", 1, 100, "%"),
        f"{coef:.3g}" if coef is not None else "-",
        cell(summary, "train_s", 0),
        cell(summary, "swd_avg", 1),
        cell(summary, "face_rate", 3),
        cell(summary, "diversity", 3),
        best,
    ]


def table_lines(results):
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for result in results:
        lines.append("| " + " | ".join(table_row(result)) + " |")
    return lines


def reference_lines(reference, count, cache):
    if reference is None:
        return [f"Not computed: the cache {cache} has fewer than 2 x {count} images."]
    levels = ", ".join(
        f"{name} {value:.2f}" for name, value in reference.items() if name.startswith("swd_")
    )
    return [
        f"Two disjoint sets of {count} real images from {cache}: the set that the runs' "
        f"evaluations use and the next {count} images of the same permutation.",
        "",
        f"- SWD: {levels}",
        f"- face_rate {reference['face_rate']:.3f}, diversity {reference['diversity']:.3f}",
        "",
        "A generator whose samples could not be told from real images would score about "
        "these values at this sample count.",
    ]


def results_lines(results, reference):
    """Return the ranking sentences of the finished runs and the list of unfinished ones."""
    finished = [r for r in results if r.finished]
    unfinished = [r for r in results if not r.finished]
    lines = []
    if unfinished:
        names = []
        for r in unfinished:
            epochs = f"{r.summary.get('epochs', 0)} of {r.spec.options.epochs} epochs"
            if r.exit_code:
                epochs += f", exit code {r.exit_code}"
            names.append(f"{r.spec.letter} ({epochs})")
        lines += [f"Left out of the rankings because they did not finish: {', '.join(names)}.",
                  ""]
    lines += [f"- {rank_sentence(finished, measure)}" for measure in measures(reference)]
    lines += [
        "",
        "Each configuration ran once, with one seed. Run-to-run variation is not measured "
        "here, so small differences may not repeat with another seed.",
    ]
    return lines


def write_report(out, results, reference, cache, command, monitor_path, gpu):
    """Write balancing.md: table, reference, generated sentences, figures and commands."""
    options = results[0].spec.options
    count = options.evalSamples
    lines = [
        "# Balancing D and G: comparison of runs A-E",
        "",
        f"Written by compare_balancing.py on {datetime.date.today().isoformat()}. "
        f"Every run uses seed {options.seed}, {options.scale} px images and "
        f"{options.epochs} epochs of {options.epochSize or 'all the training'} real images.",
        "",
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        *machine_lines(gpu),
    ]
    lines += [
        "",
        "## Runs",
        "",
        *table_lines(results),
        "",
        f"err_gen, err_fake and err_real are means over the last {FINAL_SHARE:.0%} of the "
        f"batches. Skipped D and G are shares of all batches. coefL2_D is the last value. "
        f"Train time counts training steps only (time_s of log.csv), without evaluations. "
        f"swd_avg (x1000, lower is better), face_rate and diversity come from the last "
        f"evaluation of {count} generated against {count} real images. SWD values can "
        f"only be compared at equal sample counts.",
        "",
        "## Real-vs-real reference",
        "",
        *reference_lines(reference, count, cache),
    ]
    lines += ["", "## Results", "", *results_lines(results, reference)]
    lines += [
        "",
        "## Effects against E (no batch norm in D, no balancing)",
        "",
        *[f"- {sentence}" for sentence in effect_sentences(results)],
        "",
        "## Figures",
        "",
        f"![D/G balance per run]({monitor_path.name})",
        "",
        f"![swd_avg against training time and real images seen]({QUALITY_NAME})",
        "",
        "## Run commands",
        "",
        "```",
        *[f"python train_lfw.py {shlex.join(r.spec.train_args)}" for r in results],
        "```",
        "",
    ]
    path = out / REPORT_NAME
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------
# Main


def result_line(result):
    """Return the one-line summary printed after a run."""
    summary = result.summary
    if result.status == "failed":
        return (f"<compare> {result.spec.title}: failed with exit code {result.exit_code} "
                f"after {summary.get('epochs', 0)} epochs; see the messages above")
    return (
        f"<compare> {result.spec.title}: {result.status}, {summary.get('epochs', 0)} epochs, "
        f"train time {cell(summary, 'train_s', 0)} s, swd_avg {cell(summary, 'swd_avg', 1)} "
        f"(best {cell(summary, 'best_swd', 1)}), face_rate {cell(summary, 'face_rate', 3)}, "
        f"diversity {cell(summary, 'diversity', 3)}, skipped D "
        f"{cell(summary, 'skipped_D', 1, 100, '%')} G {cell(summary, 'skipped_G', 1, 100, '%')}"
    )


def compare(args, extras, command):
    """Run the selected configurations, then write the figures and balancing.md.

    Returns 0 when every run finished, 1 when a run failed.
    """
    check_extra_options(extras)
    shared, _ = train_lfw.parse_options([*PRESETS[args.preset].train_args, *extras])
    if not Path(args.data).exists():
        raise CompareError(
            f"--data {args.data} not found: pass an LFW archive (.tgz), its extracted "
            f"folder or an HDF5 cache"
        )
    cache = data_lfw.prepare_data(args.data, scale=shared.scale)
    specs = build_run_specs(args, extras, cache)
    # Check every folder before training, so that a mismatch stops nothing halfway.
    states = [reuse_state(spec) if args.reuse else "none" for spec in specs]
    args.out.mkdir(parents=True, exist_ok=True)

    results = []
    for index, (spec, state) in enumerate(zip(specs, states), start=1):
        print(f"<compare> run {index} of {len(specs)}: {spec.title}", flush=True)
        status, exit_code = run_training(spec, state)
        result = RunResult(spec, status, exit_code, summarize_run(spec.folder))
        results.append(result)
        print(result_line(result), flush=True)

    print(f"<compare> real-vs-real reference on {2 * shared.evalSamples} images of {cache}",
          flush=True)
    reference = compute_reference(cache, shared.evalSamples, shared.seed)
    add_diversity_distance(results, reference)

    letters = "".join(spec.letter for spec in specs)
    logs = [r.spec.folder / "log.csv" for r in results if r.summary.get("batches")]
    titles = [r.spec.title for r in results if r.summary.get("batches")]
    monitor_path = args.out / f"monitor_{letters}.png"
    if logs:
        plot_monitor.plot_monitor(logs, monitor_path, titles=titles)
    plot_quality(results, reference, args.out / QUALITY_NAME)
    report = write_report(args.out, results, reference, cache, command, monitor_path,
                          specs[0].options.gpu)
    print(f"<compare> wrote {monitor_path}, {args.out / QUALITY_NAME} and {report}", flush=True)
    return 0 if all(r.status != "failed" for r in results) else 1


def main(argv=None):
    """Run the command line and return 0 on success, 1 if a run failed, 2 for invalid input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = f"python compare_balancing.py {shlex.join(argv)}"
    try:
        args, extras = parse_args(argv)
        return compare(args, extras, command)
    except (CompareError, data_lfw.DataError, train_lfw.TrainingError) as error:
        print(f"compare_balancing.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
