"""End-to-end tests of train_lfw.py on tiny configurations."""

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

import train_lfw

MINI_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-deepfunneled-mini.tgz"
TINY = ["--gpu", "-1", "--scale", "32", "--ngf", "8", "--ndf", "4", "--noiseDim", "16",
        "--batchSize", "8", "--nval", "8", "--epochSize", "32", "--threads", "1"]


def run(args):
    return train_lfw.main([str(a) for a in args])


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_log_grids_and_checkpoint(cache, tmp_path):
    assert run(TINY + ["--data", cache, "--epochs", 2, "-s", tmp_path]) == 0
    rows = read_rows(tmp_path / "log.csv")
    assert len(rows) == 2 * 32 // 4
    for column in ["epoch", "batch", "err_gen", "err_fake", "err_real", "optimize_D",
                   "optimize_G", "coefL2_D", "lr_D", "lr_G", "time_s"]:
        assert column in rows[0]
    assert [int(r["iteration"]) for r in rows] == list(range(1, 17))
    assert len(read_rows(tmp_path / "epochs.csv")) == 2
    for epoch in (0, 1, 2):
        grid = Image.open(tmp_path / f"samples_epoch_{epoch:03d}.png")
        assert grid.size == (10 * 34 + 2, 10 * 34 + 2)
    ckpt = torch.load(tmp_path / "adversarial.pt", weights_only=True)
    assert ckpt["epoch"] == 3
    assert ckpt["sgdState_D"]["numUpdates"] == 16
    assert (tmp_path / "adversarial.pt.old").exists()


def test_learning_rate_decays_per_epoch(cache, tmp_path):
    run(TINY + ["--data", cache, "--epochs", 2, "-s", tmp_path, "-r", "0.01"])
    rows = read_rows(tmp_path / "log.csv")
    assert float(rows[0]["lr_D"]) == pytest.approx(0.01)
    # After epoch 1 the Lua sets lr * 0.99^2, because its epoch counter has advanced.
    assert float(rows[-1]["lr_D"]) == pytest.approx(0.01 * 0.99**2, rel=1e-5)


def test_resume_equals_uninterrupted_run(cache, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(TINY + ["--data", cache, "--epochs", 2, "-s", straight, "--balance", "margin+l2"])
    run(TINY + ["--data", cache, "--epochs", 1, "-s", split, "--balance", "margin+l2"])
    assert run(["--network", split / "adversarial.pt", "--epochs", 2]) == 0
    a = torch.load(straight / "adversarial.pt", weights_only=True)
    b = torch.load(split / "adversarial.pt", weights_only=True)
    for net in ("G", "D"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"
    for state in ("sgdState_D", "sgdState_G"):
        for key, value in a[state].items():
            other = b[state][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    assert drop_time(read_rows(straight / "log.csv")) == drop_time(read_rows(split / "log.csv"))


@pytest.mark.parametrize("option, value", [("--scale", "64"), ("--noiseDim", "32"),
                                           ("--ngf", "16"), ("--ndf", "8")])
def test_resume_rejects_contradicting_architecture(cache, tmp_path, capsys, option, value):
    run(TINY + ["--data", cache, "--epochs", 1, "-s", tmp_path])
    capsys.readouterr()
    assert run(["--network", tmp_path / "adversarial.pt", option, value]) == 2
    message = capsys.readouterr().err
    assert f"{option} {value}" in message
    assert "checkpoint" in message


def test_margin_rule_skips_updates_in_log(cache, tmp_path):
    run(TINY + ["--data", cache, "--epochs", 2, "-s", tmp_path, "--balance", "margin"])
    for row in read_rows(tmp_path / "log.csv"):
        err_R, err_F = float(row["err_real"]), float(row["err_fake"])
        d_skipped = err_R < 0.3 or err_F < 0.3
        g_skipped = err_R > 0.7 or err_F > 0.7
        both = d_skipped and g_skipped
        assert row["optimize_D"] == str(int(both or not d_skipped))
        assert row["optimize_G"] == str(int(both or not g_skipped))


def test_balance_none_never_skips(cache, tmp_path):
    run(TINY + ["--data", cache, "--epochs", 1, "-s", tmp_path, "--balance", "none"])
    rows = read_rows(tmp_path / "log.csv")
    assert all(r["optimize_D"] == "1" and r["optimize_G"] == "1" for r in rows)
    assert all(float(r["coefL2_D"]) == 0 for r in rows)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_other_optimizers_train(cache, tmp_path, optimizer):
    assert run(TINY + ["--data", cache, "--epochs", 1, "-s", tmp_path, "--optimizer", optimizer]) == 0


@pytest.mark.parametrize("args, message", [
    (["--batchSize", "7"], "--batchSize 7"),
    (["--batchSize", "1"], "--batchSize 1"),
    (["--scale", "48"], "--scale 48"),
    (["-r", "-0.1"], "--learningRate -0.1"),
    (["--epochSize", "1000"], "--epochSize 1000"),
    (["--nval", "48"], "--nval 48"),
])
def test_invalid_options_rejected(cache, tmp_path, capsys, args, message):
    assert run(TINY + ["--data", cache, "-s", tmp_path] + args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not MINI_ARCHIVE.exists(), reason="LFW mini archive not present")
def test_trains_on_lfw_mini_archive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(TINY + ["--data", MINI_ARCHIVE, "--epochs", 1, "--epochSize", 64, "-s", "run"]) == 0
    assert (tmp_path / "data" / "lfw_crop50_32.hdf5").exists()
    assert len(read_rows(tmp_path / "run" / "log.csv")) == 64 // 4
