"""Tests of compare_balancing.py: the tiny preset end to end on a synthetic 32 px cache.

The cache holds 64 random images, so every run trains for seconds and the real-vs-real
reference (2 x 32 images) fits. Numbers in the report are not checked for quality, only
for presence and for consistency with the run folders.
"""

import csv
import json
import re

import h5py
import numpy as np
import pytest

import compare_balancing

FOLDERS = {"A": "A_bnD_none", "B": "B_margin", "C": "C_l2_fast", "D": "D_margin_l2",
           "E": "E_none"}
TINY_EPOCHS = 2


def make_cache(path, count=64, side=32):
    images = np.random.default_rng(0).integers(0, 256, size=(count, 3, side, side),
                                               dtype=np.uint8)
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("lfw", data=images)
        dataset.attrs.update(crop=50, scale=side, count=count, source="synthetic", seed=1)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("data") / "tiny_32.hdf5")


def compare(cache, out, *options):
    argv = ["--data", str(cache), "--preset", "tiny", "--out", str(out), *options]
    if "--" not in options:
        argv.append("--")
    return compare_balancing.main([*argv, "--threads", "1"])


@pytest.fixture(scope="module")
def comparison(cache, tmp_path_factory):
    """The output folder of one full tiny comparison of runs A-E."""
    out = tmp_path_factory.mktemp("balancing")
    assert compare(cache, out) == 0
    return out


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def report_rows(report):
    return [line for line in report.splitlines() if re.match(r"\| [A-E]: ", line)]


def test_full_comparison_writes_run_folders(comparison):
    for letter, name in FOLDERS.items():
        folder = comparison / name
        assert len(read_rows(folder / "log.csv")) == TINY_EPOCHS * 32 // 4, letter
        assert len(read_rows(folder / "eval.csv")) == TINY_EPOCHS, letter
        assert len(read_rows(folder / "epochs.csv")) == TINY_EPOCHS, letter
        assert (folder / compare_balancing.RECORD_NAME).is_file(), letter


def test_run_options_follow_configuration(comparison):
    options = {letter: json.loads((comparison / name / compare_balancing.RECORD_NAME)
                                  .read_text())["options"]
               for letter, name in FOLDERS.items()}
    assert [options[letter]["bnD"] for letter in "ABCDE"] == [True, False, False, False, False]
    assert [options[letter]["balance"] for letter in "ABCDE"] == [
        "none", "margin", "l2", "margin+l2", "none"]
    assert [options[letter]["learningRate"] for letter in "ABCDE"] == [
        0.001, 0.001, 0.002, 0.001, 0.001]
    shared = {key: value for key, value in options["A"].items()
              if key not in ("bnD", "balance", "learningRate")}
    for letter in "BCDE":
        for key, value in shared.items():
            assert options[letter][key] == value, (letter, key)


def test_run_logs_follow_configuration(comparison):
    logs = {letter: read_rows(comparison / name / "log.csv") for letter, name in FOLDERS.items()}
    assert float(logs["C"][0]["lr_D"]) == pytest.approx(0.002)
    assert float(logs["E"][0]["lr_D"]) == pytest.approx(0.001)
    assert {float(row["coefL2_D"]) for row in logs["E"]} == {0.0}
    assert {row["optimize_D"] for row in logs["E"]} == {"1"}
    assert {row["optimize_G"] for row in logs["E"]} == {"1"}


def test_full_comparison_writes_figures(comparison):
    assert (comparison / "monitor_ABCDE.png").stat().st_size > 0
    assert (comparison / "quality.png").stat().st_size > 0


def test_report_has_row_per_run(comparison):
    report = (comparison / "balancing.md").read_text()
    rows = report_rows(report)
    assert [row[2] for row in rows] == list("ABCDE")
    for row in rows:
        assert "| trained |" in row
        assert f"| {TINY_EPOCHS}/{TINY_EPOCHS} |" in row


def test_report_has_winner_sentences(comparison):
    report = (comparison / "balancing.md").read_text()
    assert re.search(r"- Lowest final SWD: [A-E][^\n]*\([0-9.]+\)", report)
    assert re.search(r"- Lowest SWD at any evaluation: [A-E]", report)
    assert re.search(r"- Highest final face-detection rate: ", report)
    assert re.search(r"- Final diversity closest to the real-vs-real value", report)
    assert re.search(r"- Final smoothed errors closest to ln 2", report)
    assert re.search(r"- Fewest skipped updates", report)
    assert re.search(r"- Shortest training time: [A-E]", report)
    assert "Batch norm in D (A against E): final SWD" in report


def test_report_winner_matches_eval_csv(comparison):
    final_swd = {letter: float(read_rows(comparison / name / "eval.csv")[-1]["swd_avg"])
                 for letter, name in FOLDERS.items()}
    best = min(final_swd, key=final_swd.get)
    report = (comparison / "balancing.md").read_text()
    sentence = re.search(r"- Lowest final SWD: ([^\n]*)", report).group(1)
    assert sentence.startswith(best)
    assert f"({final_swd[best]:.1f})" in sentence


def test_report_has_command_machine_reference(comparison):
    report = (comparison / "balancing.md").read_text()
    assert "python compare_balancing.py --data" in report
    assert "--preset tiny" in report
    assert "- CPU: " in report
    assert "torch " in report
    assert "## Real-vs-real reference" in report
    assert re.search(r"- SWD: swd_32 [0-9.]+, swd_16 [0-9.]+, swd_avg [0-9.]+", report)
    assert report.count("python train_lfw.py ") == 5


def test_reuse_does_not_retrain(cache, comparison, capsys):
    logs = [comparison / name / "log.csv" for name in FOLDERS.values()]
    before = [path.stat().st_mtime_ns for path in logs]
    capsys.readouterr()
    assert compare(cache, comparison, "--reuse") == 0
    assert [path.stat().st_mtime_ns for path in logs] == before
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 5
    assert len(report_rows((comparison / "balancing.md").read_text())) == 5


def test_reuse_rejects_other_options(cache, comparison, capsys):
    assert compare(cache, comparison, "--reuse", "--only", "B", "--lrC", "3",
                   "--", "--margin", "0.2") == 2
    assert "--margin 0.3 there, 0.2 now" in capsys.readouterr().err


def test_reuse_resumes_interrupted_run(cache, tmp_path):
    assert compare(cache, tmp_path, "--only", "B") == 0
    folder = tmp_path / FOLDERS["B"]
    # A run stopped after epoch 1 of 2: train one epoch, then record it as a 2-epoch run.
    assert compare(cache, tmp_path / "short", "--only", "B", "--", "--epochs", "1") == 0
    short = tmp_path / "short" / FOLDERS["B"]
    record_path = short / compare_balancing.RECORD_NAME
    record = json.loads(record_path.read_text())
    record["options"]["epochs"] = 2
    record_path.write_text(json.dumps(record))
    assert compare(cache, tmp_path / "short", "--only", "B", "--reuse") == 0
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    assert drop_time(read_rows(short / "log.csv")) == drop_time(read_rows(folder / "log.csv"))
    assert "| resumed |" in (tmp_path / "short" / "balancing.md").read_text()


def test_only_runs_selected(cache, tmp_path):
    assert compare(cache, tmp_path, "--only", "a,C") == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["A_bnD_none",
                                                                        "C_l2_fast"]
    assert (tmp_path / "monitor_AC.png").is_file()
    report = (tmp_path / "balancing.md").read_text()
    assert [row[2] for row in report_rows(report)] == ["A", "C"]
    assert "E did not finish or was not run" in report


@pytest.mark.parametrize("options, message", [
    (["--only", "A,F"], "invalid --only 'A,F'"),
    (["--", "--balance", "l2"], "--balance after -- is not allowed"),
    (["--", "--bnD"], "--bnD after -- is not allowed"),
    (["--", "-s", "x"], "--save after -- is not allowed"),
    (["--", "--evalEvery", "0"], "--evalEvery 0 leaves eval.csv empty"),
])
def test_invalid_options_rejected(cache, tmp_path, capsys, options, message):
    assert compare(cache, tmp_path, *options) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_rank_sentence_reports_ties_and_percent():
    def result(letter, value):
        spec = compare_balancing.RunSpec(letter, letter, None, [], None)
        return compare_balancing.RunResult(spec, "trained", summary={"swd_avg": value})

    measure = compare_balancing.Measure("swd_avg", "Lowest final SWD", True, 1, "percent")
    sentence = compare_balancing.rank_sentence([result("B", 38.0), result("C", 31.2)],
                                               measure)
    assert sentence == "Lowest final SWD: C (31.2), 18% below B (38.0)."
    tie = compare_balancing.rank_sentence([result("B", 31.21), result("C", 31.24)], measure)
    assert tie == "Lowest final SWD: B and C tie at 31.2."
    three = compare_balancing.rank_sentence(
        [result("D", 40.0), result("C", 31.24), result("B", 31.21), result("A", 31.23)],
        measure)
    assert three == "Lowest final SWD: A, B and C tie at 31.2, 22% below D (40.0)."
    nan = compare_balancing.rank_sentence([result("B", float("nan"))], measure)
    assert nan == "Lowest final SWD: no finished run has a value."


def test_failed_run_left_out_of_rankings(cache, tmp_path, monkeypatch):
    train = compare_balancing.train_lfw.main

    def fail_run_c(argv):
        if any(arg.endswith(FOLDERS["C"]) for arg in argv):
            return 2
        return train(argv)

    monkeypatch.setattr(compare_balancing.train_lfw, "main", fail_run_c)
    assert compare(cache, tmp_path, "--only", "B,C") == 1
    report = (tmp_path / "balancing.md").read_text()
    assert "| C: adaptive L2, rmsprop at lr 0.002 | failed (exit 2) | 0/2 |" in report
    assert "did not finish: C (0 of 2 epochs, exit code 2)." in report
    assert "- Lowest final SWD: B (" in report
    assert "the only finished run." in report
    assert (tmp_path / "monitor_BC.png").is_file()


def test_reference_skipped_for_small_cache(cache, tmp_path):
    assert compare(cache, tmp_path, "--only", "E", "--", "--evalSamples", "40") == 0
    report = (tmp_path / "balancing.md").read_text()
    assert "Not computed: the cache" in report
    assert "fewer than 2 x 40 images." in report
