"""Tests for plot_monitor.py on synthetic log.csv files written to tmp_path.

The logs have the columns train_lfw.py writes, with D and G updates skipped by the
margin rule, so every element of the plot is drawn.
"""

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import plot_monitor

HEADER = (
    "epoch,batch,iteration,err_gen,err_fake,err_real,"
    "optimize_D,optimize_G,coefL2_D,lr_D,lr_G,time_s"
).split(",")
MARGIN = 0.3
SCRIPT = Path(plot_monitor.__file__)


def synthetic_rows(rows, batches_per_epoch, seed):
    """Yield log rows whose skip flags and coefL2_D follow the balancing rules."""
    rng = np.random.default_rng(seed)
    coef_l2 = 0.0
    for index in range(rows):
        phase = 6 * index / rows
        err_gen = max(0.01, 0.7 + 0.6 * math.sin(phase) + rng.normal(0, 0.25))
        err_fake = max(0.01, 0.6 - 0.3 * math.sin(phase) + rng.normal(0, 0.15))
        err_real = max(0.01, 0.5 + rng.normal(0, 0.2))
        optimize_d = int(err_real >= MARGIN and err_fake >= MARGIN)
        optimize_g = int(err_real <= 1 - MARGIN and err_fake <= 1 - MARGIN)
        if err_gen > 1.3:
            coef_l2 += 1e-5
        elif err_gen < 0.9:
            coef_l2 = max(0.0, coef_l2 - 1e-5)
        yield [
            index // batches_per_epoch + 1,
            index % batches_per_epoch + 1,
            index + 1,
            err_gen,
            err_fake,
            err_real,
            optimize_d,
            optimize_g,
            coef_l2,
            2e-3,
            2e-3,
            0.1 * index,
        ]


def write_log(path, rows=300, batches_per_epoch=100, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        writer.writerows(synthetic_rows(rows, batches_per_epoch, seed))
    return path


def png_size(path):
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        return image.size


def run_main(argv, capsys):
    status = plot_monitor.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# Reading the log


def test_read_log_columns_and_lengths(tmp_path):
    path = write_log(tmp_path / "run" / "log.csv", rows=300)

    log = plot_monitor.read_log(path)

    assert list(log) == HEADER
    for name, values in log.items():
        assert isinstance(values, np.ndarray), name
        assert len(values) == 300, name
    assert log["iteration"][0] == 1
    assert log["iteration"][-1] == 300
    assert log["epoch"][-1] == 3
    assert set(np.unique(log["optimize_D"])) == {0.0, 1.0}
    assert set(np.unique(log["optimize_G"])) == {0.0, 1.0}


def test_read_log_values_match_file(tmp_path):
    path = write_log(tmp_path / "log.csv", rows=20, seed=3)
    expected = list(synthetic_rows(20, 100, seed=3))

    log = plot_monitor.read_log(path)

    np.testing.assert_allclose(log["err_gen"], [row[3] for row in expected])
    np.testing.assert_allclose(log["coefL2_D"], [row[8] for row in expected])


def test_read_log_reordered_extra_columns(tmp_path):
    path = tmp_path / "log.csv"
    write_log(path, rows=5)
    reordered = []
    for number, line in enumerate(path.read_text().splitlines()):
        phase = "phase" if number == 0 else "warmup"
        reordered.append(",".join([phase, *reversed(line.split(","))]))
    path.write_text("\n".join(reordered) + "\n")

    log = plot_monitor.read_log(path)

    assert log["phase"].tolist() == ["warmup"] * 5
    assert log["batch"].tolist() == [1, 2, 3, 4, 5]
    assert log["time_s"].dtype == np.float64


def test_read_log_skips_incomplete_last_line(tmp_path):
    path = write_log(tmp_path / "log.csv", rows=10)
    with path.open("a") as file:
        file.write("1,11,11,0.7")

    with pytest.warns(UserWarning, match="line 12: skipped incomplete last line"):
        log = plot_monitor.read_log(path)

    assert len(log["iteration"]) == 10


def test_read_log_unterminated_complete_line(tmp_path):
    path = write_log(tmp_path / "log.csv", rows=10)
    path.write_text(path.read_text().rstrip("\r\n"))

    log = plot_monitor.read_log(path)

    assert len(log["iteration"]) == 10


# Derived series


def test_moving_average_hand_computed():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])

    np.testing.assert_allclose(plot_monitor.moving_average(values, 1), values)
    np.testing.assert_allclose(plot_monitor.moving_average(values, 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(plot_monitor.moving_average(values, 3), [1, 1.5, 2, 3, 4])


def test_moving_average_window_longer_than_series():
    values = np.array([2.0, 4.0, 6.0])

    smoothed = plot_monitor.moving_average(values, 50)

    np.testing.assert_allclose(smoothed, [2, 3, 4])


def test_moving_average_skips_nan():
    values = np.array([1.0, np.nan, 3.0, np.nan, np.nan])

    smoothed = plot_monitor.moving_average(values, 2)

    np.testing.assert_allclose(smoothed, [1, 1, 3, 3, np.nan])


def test_moving_average_rejects_zero_window():
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        plot_monitor.moving_average([1.0, 2.0], 0)


def test_epoch_starts_between_epochs(tmp_path):
    log = plot_monitor.read_log(write_log(tmp_path / "log.csv", rows=250))

    np.testing.assert_allclose(plot_monitor.epoch_starts(log), [100.5, 200.5])


def test_x_values_in_epochs(tmp_path):
    log = plot_monitor.read_log(write_log(tmp_path / "log.csv", rows=200))

    x = plot_monitor.x_values(log, "epoch")

    assert x[0] == pytest.approx(0.01)
    assert x[99] == pytest.approx(1.0)
    assert x[-1] == pytest.approx(2.0)


def test_panel_letters_and_default_titles(tmp_path):
    assert [plot_monitor.panel_letter(i) for i in (0, 1, 25, 26, 27)] == [
        "A",
        "B",
        "Z",
        "AA",
        "AB",
    ]
    paths = [tmp_path / "margin" / "log.csv", tmp_path / "no_margin" / "log.csv"]
    assert plot_monitor.default_titles(paths) == ["A: margin", "B: no_margin"]


# Plotting


def test_main_writes_png_next_to_csv(tmp_path, capsys):
    path = write_log(tmp_path / "run" / "log.csv")

    status, out, err = run_main([path], capsys)

    expected = tmp_path / "run" / "monitor.png"
    assert status == 0
    assert err == ""
    assert out.strip() == str(expected)
    width, height = png_size(expected)
    assert width > 300
    assert height > 300


def test_png_width_grows_with_panels(tmp_path):
    paths = [write_log(tmp_path / f"run{i}" / "log.csv", seed=i) for i in range(3)]

    widths = []
    for count in (1, 2, 3):
        out = plot_monitor.plot_monitor(paths[:count], tmp_path / f"panels{count}.png")
        widths.append(png_size(out)[0])

    assert widths[0] < widths[1] < widths[2]


def test_main_options_epoch_titles_smooth(tmp_path, capsys):
    first = write_log(tmp_path / "a" / "log.csv", rows=120, batches_per_epoch=40)
    second = write_log(tmp_path / "b" / "log.csv", rows=80, batches_per_epoch=40, seed=1)
    out = tmp_path / "figures" / "compare.png"
    argv = [first, second, "-o", out, "--smooth", 10, "--titles", "margin", "none"]

    status, stdout, _ = run_main([*argv, "--x", "epoch"], capsys)

    assert status == 0
    assert stdout.strip() == str(out)
    png_size(out)


def test_short_log_plots_with_large_smooth(tmp_path):
    path = write_log(tmp_path / "log.csv", rows=3)

    out = plot_monitor.plot_monitor([path], tmp_path / "short.png", smooth=50)

    png_size(out)


def test_output_without_suffix_gets_png(tmp_path):
    path = write_log(tmp_path / "log.csv", rows=20)

    out = plot_monitor.plot_monitor([path], tmp_path / "monitor")

    assert out == tmp_path / "monitor.png"
    png_size(out)


def test_titles_count_mismatch_exits_2(tmp_path, capsys):
    path = write_log(tmp_path / "log.csv", rows=10)

    with pytest.raises(SystemExit) as excinfo:
        plot_monitor.main([str(path), "--titles", "A", "B"])

    assert excinfo.value.code == 2
    assert "got 2 titles for 1 CSV files" in capsys.readouterr().err


def test_smooth_zero_exits_2(tmp_path, capsys):
    path = write_log(tmp_path / "log.csv", rows=10)

    with pytest.raises(SystemExit) as excinfo:
        plot_monitor.main([str(path), "--smooth", "0"])

    assert excinfo.value.code == 2
    assert "must be >= 1, got 0" in capsys.readouterr().err


# Errors on bad logs


def header_line(columns=HEADER):
    return ",".join(columns) + "\n"


def good_row(iteration):
    return f"1,{iteration},{iteration},0.9,0.6,0.5,1,1,0,0.002,0.002,{iteration}\n"


BAD_LOGS = {
    "empty": ("", "is empty: expected a header line"),
    "blank_lines": ("\n\n", "is empty: expected a header line"),
    "header_only": (header_line(), "has a header but no rows"),
    "missing_columns": (
        header_line([name for name in HEADER if name not in ("err_fake", "coefL2_D")])
        + "1,1,1,0.9,0.5,1,1,0.002,0.002,1\n",
        "missing required columns: err_fake, coefL2_D",
    ),
    "non_numeric": (
        header_line() + good_row(1) + good_row(2).replace("0.9", "abc"),
        "line 3: column err_gen has non-numeric value 'abc'",
    ),
    "empty_value": (
        header_line() + good_row(1).replace(",0,0.002", ",,0.002") + good_row(2),
        "line 2: column coefL2_D has non-numeric value ''",
    ),
    "short_row": (
        header_line() + "1,1,1,0.9\n" + good_row(2),
        "line 2: expected 12 fields like the header, found 4",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LOGS))
def test_bad_log_exits_2_with_message(tmp_path, capsys, case):
    content, expected_message = BAD_LOGS[case]
    path = tmp_path / "log.csv"
    path.write_text(content)

    status, out, err = run_main([path], capsys)

    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("plot_monitor.py: error: ")
    assert str(path) in err
    assert expected_message in err
    assert not (tmp_path / "monitor.png").exists()


def test_missing_file_exits_2(tmp_path, capsys):
    path = tmp_path / "missing" / "log.csv"

    status, _, err = run_main([path], capsys)

    assert status == 2
    assert err == f"plot_monitor.py: error: log file not found: {path} (check the path)\n"


def test_subprocess_missing_file_no_traceback(tmp_path):
    path = tmp_path / "log.csv"

    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    expected = f"plot_monitor.py: error: log file not found: {path} (check the path)"
    assert result.stderr.strip() == expected
