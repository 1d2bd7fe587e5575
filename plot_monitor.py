"""Plot how the discriminator D and the generator G of a GAN run balance each other.

Reads one or more log.csv files that train_lfw.py writes (a header line, then one row
per batch). Writes a PNG with one panel per file, side by side and sharing the y axis,
so that runs with different settings can be compared. Each panel shows:

- err_gen, err_fake and err_real per batch: raw values as thin translucent lines and a
  trailing moving average as thick lines;
- a dashed line at ln 2, the binary cross entropy of a discriminator that outputs 0.5
  (chance);
- ticks in a band below zero where the D or G update was skipped by the margin rule;
- coefL2_D, the discriminator's L2 weight-decay coefficient, on the right y axis;
- epoch boundaries as faint vertical lines when the x axis is the iteration.

Usage:
    python plot_monitor.py runs/a/log.csv runs/b/log.csv -o compare.png --smooth 100

Without -o the PNG is written as monitor.png next to the first CSV. The script prints
the path it wrote. Other scripts can call read_log() and plot_monitor() directly.
"""

import argparse
import csv
import math
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Render to files only, so the script runs without a display.

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

CHANCE_ERROR = math.log(2)  # BCE when D outputs 0.5 for every image.

ERROR_COLUMNS = ("err_gen", "err_fake", "err_real")
ERROR_COLORS = {"err_gen": "tab:blue", "err_fake": "tab:red", "err_real": "tab:green"}
SKIP_COLORS = {"optimize_D": "tab:orange", "optimize_G": "tab:purple"}
SKIP_LABELS = {"optimize_D": "D update skipped", "optimize_G": "G update skipped"}

# The columns the plot uses. The log may contain more columns, in any order.
REQUIRED_COLUMNS = (
    "epoch",
    "batch",
    "iteration",
    *ERROR_COLUMNS,
    "optimize_D",
    "optimize_G",
    "coefL2_D",
)

# Height of the band below y = 0 that contains the skip ticks, as a fraction of the
# height above zero.
SKIP_BAND_FRACTION = 0.15

# Raw errors above this percentile (over all panels) fall outside the y range, so
# that a few spikes do not flatten the curves of interest.
Y_TOP_PERCENTILE = 99.5

PANEL_WIDTH_INCHES = 5.5
PANEL_HEIGHT_INCHES = 5.0
LEGEND_COLUMNS_PER_PANEL = 3


class LogError(ValueError):
    """A log.csv that cannot be read: empty, missing columns or a malformed row."""


# Reading the log


def read_log(path):
    """Read a training log.csv into a dict that maps each column name to an array.

    Columns are returned in file order. Required columns are float64 arrays. Other
    columns are float64 when every value is numeric and string arrays otherwise.
    A last line that has no line break and does not parse is skipped with a
    warning, because train_lfw.py may still be writing it.

    Raises FileNotFoundError for a missing file and LogError for a file that is not
    UTF-8 text, an empty file, a header without rows, missing required columns or a
    malformed row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path} (check the path)")

    text = read_text(path)
    rows = list(csv.reader(text.splitlines()))
    numbered_rows = [(number, row) for number, row in enumerate(rows, start=1) if row]
    if not numbered_rows:
        raise LogError(
            f"{path} is empty: expected a header line and one row per batch "
            "(has training finished its first batch?)"
        )

    _, header = numbered_rows[0]
    header = [name.strip() for name in header]
    check_required_columns(path, header)

    body = numbered_rows[1:]
    if body and not text.endswith("\n") and not row_parses(header, body[-1][1]):
        line_number = body[-1][0]
        warnings.warn(f"{path} line {line_number}: skipped incomplete last line")
        body = body[:-1]
    if not body:
        raise LogError(
            f"{path} has a header but no rows: expected one row per batch "
            "(has training finished its first batch?)"
        )

    return columns_from_rows(path, header, body)


def read_text(path):
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LogError(f"{path} is not a UTF-8 text file: {error.reason}") from error


def check_required_columns(path, header):
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise LogError(
            f"{path} is missing required columns: {', '.join(missing)} "
            f"(header has: {', '.join(header)})"
        )


def row_parses(header, row):
    if len(row) != len(header):
        return False
    values = dict(zip(header, row))
    return all(is_number(values[name]) for name in REQUIRED_COLUMNS)


def is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def columns_from_rows(path, header, numbered_rows):
    """Check each row's field count and convert the columns to arrays."""
    for line_number, row in numbered_rows:
        if len(row) != len(header):
            raise LogError(
                f"{path} line {line_number}: expected {len(header)} fields "
                f"like the header, found {len(row)}"
            )

    columns = {}
    for index, name in enumerate(header):
        values = [(line_number, row[index].strip()) for line_number, row in numbered_rows]
        if name in REQUIRED_COLUMNS:
            columns[name] = parse_numeric_column(path, name, values)
        else:
            columns[name] = parse_optional_column(values)
    return columns


def parse_numeric_column(path, name, numbered_values):
    numbers = np.empty(len(numbered_values), dtype=np.float64)
    for position, (line_number, text) in enumerate(numbered_values):
        try:
            numbers[position] = float(text)
        except ValueError:
            raise LogError(
                f"{path} line {line_number}: column {name} has non-numeric value "
                f"{text!r} (expected a number)"
            ) from None
    return numbers


def parse_optional_column(numbered_values):
    texts = [text for _, text in numbered_values]
    if all(is_number(text) for text in texts):
        return np.array([float(text) for text in texts], dtype=np.float64)
    return np.array(texts)


# Series derived from the log


def moving_average(values, window):
    """Return the trailing mean over `window` values, one output per input value.

    The first window - 1 outputs average the values seen so far. NaN and infinite
    values are left out of each mean, and a window with no finite value gives NaN.
    A window larger than the series is clamped to its length.
    """
    values = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"moving average window must be >= 1, got {window}")
    window = min(window, len(values))

    finite = np.isfinite(values)
    sums = np.concatenate(([0.0], np.cumsum(np.where(finite, values, 0.0))))
    counts = np.concatenate(([0], np.cumsum(finite)))

    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    window_counts = counts[ends] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums[ends] - sums[starts]) / window_counts
    return np.where(window_counts > 0, means, np.nan)


def x_values(log, x):
    """Return the x coordinate of each batch: the iteration, or the fractional epoch.

    In epoch mode, batch b of epoch e is placed at e - 1 + b / B, where B is the
    largest batch number in the log, so epoch e spans (e - 1, e].
    """
    if x == "iteration":
        return log["iteration"]
    batches_per_epoch = np.max(log["batch"])
    return log["epoch"] - 1 + log["batch"] / batches_per_epoch


def epoch_starts(log):
    """Return the iterations halfway between the last batch of an epoch and the next."""
    changed = np.flatnonzero(np.diff(log["epoch"]) != 0) + 1
    return log["iteration"][changed] - 0.5


def panel_letter(index):
    """Return "A" for 0, ..., "Z" for 25, "AA" for 26, like spreadsheet columns."""
    letters = ""
    index += 1
    while index > 0:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def default_titles(csv_paths):
    return [
        f"{panel_letter(index)}: {Path(path).resolve().parent.name}"
        for index, path in enumerate(csv_paths)
    ]


def error_axis_top(logs):
    """Return the top of the shared error axis: a high percentile of all raw errors."""
    errors = np.concatenate([log[name] for log in logs for name in ERROR_COLUMNS])
    errors = errors[np.isfinite(errors)]
    if errors.size == 0:
        return 1.0
    return max(1.0, 1.1 * np.percentile(errors, Y_TOP_PERCENTILE))


def coef_axis_top(logs):
    """Return the top of the coefL2_D axis, or 1e-5 when every value is zero."""
    values = np.concatenate([log["coefL2_D"] for log in logs])
    values = values[np.isfinite(values)]
    largest = values.max() if values.size else 0.0
    return 1.1 * largest if largest > 0 else 1e-5


# Drawing


def draw_errors(ax, x, log, smooth):
    for name in ERROR_COLUMNS:
        color = ERROR_COLORS[name]
        ax.plot(x, log[name], color=color, linewidth=0.5, alpha=0.3)
        ax.plot(x, moving_average(log[name], smooth), color=color, linewidth=2, label=name)
    ax.axhline(CHANCE_ERROR, color="0.3", linestyle="--", linewidth=1, label="chance (ln 2)")


def draw_skipped_updates(ax, x, log, y_top):
    """Draw a row of ticks below y = 0 for each network at the batches it skipped."""
    rows = {"optimize_D": -0.35, "optimize_G": -0.7}
    for column, row in rows.items():
        skipped = log[column] == 0
        ax.plot(
            x[skipped],
            np.full(np.count_nonzero(skipped), row * SKIP_BAND_FRACTION * y_top),
            linestyle="none",
            marker="|",
            markersize=6,
            color=SKIP_COLORS[column],
            label=SKIP_LABELS[column],
        )
    ax.axhline(0, color="0.6", linewidth=0.6)


def draw_epoch_boundaries(ax, log):
    for index, iteration in enumerate(epoch_starts(log)):
        label = "epoch start" if index == 0 else None
        ax.axvline(iteration, color="0.75", linewidth=0.6, zorder=0, label=label)


def draw_coef_l2(ax, x, log):
    """Draw coefL2_D on a right-hand y axis and return that axis."""
    coef_ax = ax.twinx()
    coef_ax.plot(
        x, log["coefL2_D"], color="black", linestyle=":", linewidth=1.5, label="coefL2_D (right)"
    )
    coef_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return coef_ax


def set_error_axis_limits(ax, y_top):
    """Limit the shared error axis and hide the tick labels inside the skip band."""
    ax.set_ylim(-SKIP_BAND_FRACTION * y_top, y_top)
    ticks = [tick for tick in ax.get_yticks() if 0 <= tick <= y_top]
    ax.set_yticks(ticks)


def collect_legend_entries(axes_list):
    handles, labels = [], []
    for ax in axes_list:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


def plot_monitor(csv_paths, out_path, smooth=50, titles=None, x="iteration"):
    """Plot one monitor panel per log.csv side by side and save the figure.

    smooth is the moving-average window in batches. It is clamped to the length of
    each log. titles replaces the default panel titles ("A: <CSV folder name>", ...)
    and must have one entry per CSV. x is "iteration" or "epoch". The image format
    follows the suffix of out_path, and ".png" is appended when it has none.
    Returns the path written.
    """
    csv_paths = [Path(path) for path in csv_paths]
    if not csv_paths:
        raise ValueError("plot_monitor needs at least one CSV path, got none")
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1 batch, got {smooth}")
    if x not in ("iteration", "epoch"):
        raise ValueError(f"x must be 'iteration' or 'epoch', got {x!r}")
    if titles is None:
        titles = default_titles(csv_paths)
    if len(titles) != len(csv_paths):
        raise ValueError(f"got {len(titles)} titles for {len(csv_paths)} CSV files")

    logs = [read_log(path) for path in csv_paths]
    y_top = error_axis_top(logs)
    coef_top = coef_axis_top(logs)

    figure_size = (PANEL_WIDTH_INCHES * len(logs), PANEL_HEIGHT_INCHES)
    fig, axes = plt.subplots(
        1, len(logs), sharey=True, figsize=figure_size, squeeze=False, layout="constrained"
    )
    axes = axes[0]
    coef_axes = []
    for ax, log, title in zip(axes, logs, titles):
        x_coords = x_values(log, x)
        draw_errors(ax, x_coords, log, smooth)
        draw_skipped_updates(ax, x_coords, log, y_top)
        if x == "iteration":
            draw_epoch_boundaries(ax, log)
        coef_ax = draw_coef_l2(ax, x_coords, log)
        coef_ax.set_ylim(-SKIP_BAND_FRACTION * coef_top, coef_top)
        coef_axes.append(coef_ax)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.margins(x=0.01)

    set_error_axis_limits(axes[0], y_top)
    axes[0].set_ylabel("binary cross entropy")
    for coef_ax in coef_axes[:-1]:
        coef_ax.tick_params(axis="y", right=False, labelright=False)
        coef_ax.yaxis.offsetText.set_visible(False)
    coef_axes[-1].set_ylabel("coefL2_D")

    handles, labels = collect_legend_entries([*axes, *coef_axes])
    columns = min(len(labels), LEGEND_COLUMNS_PER_PANEL * len(logs))
    fig.legend(handles, labels, loc="outside lower center", ncol=columns, frameon=False)

    out_path = Path(out_path)
    if not out_path.suffix:
        out_path = out_path.with_suffix(".png")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


# Command line


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Plot err_gen, err_fake, err_real, skipped updates and coefL2_D "
        "from one or more training log.csv files, one panel per file."
    )
    parser.add_argument("csv", nargs="+", type=Path, help="log.csv files, one panel each")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output image path (default: monitor.png in the first CSV's folder)",
    )
    parser.add_argument(
        "--smooth",
        type=positive_int,
        default=50,
        help="moving-average window in batches (default: 50)",
    )
    parser.add_argument(
        "--titles", nargs="+", help="panel titles, one per CSV (default: A, B, ... + folder)"
    )
    parser.add_argument(
        "--x",
        choices=("iteration", "epoch"),
        default="iteration",
        help="x axis: global batch count or fractional epoch (default: iteration)",
    )
    args = parser.parse_args(argv)
    if args.titles is not None and len(args.titles) != len(args.csv):
        parser.error(f"got {len(args.titles)} titles for {len(args.csv)} CSV files")
    return args


def format_warning(message, category, filename, lineno, line=None):
    return f"plot_monitor.py: warning: {message}\n"


def main(argv=None):
    """Run the command line and return the exit status: 0, or 2 for an unreadable log."""
    warnings.formatwarning = format_warning
    args = parse_args(argv)
    out_path = args.output or args.csv[0].parent / "monitor.png"
    try:
        written = plot_monitor(args.csv, out_path, args.smooth, args.titles, args.x)
    except (LogError, OSError) as error:
        print(f"plot_monitor.py: error: {error}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
