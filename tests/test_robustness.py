"""Robustness tests of train_lfw.py: failed writes, signals, NaN stops and bad inputs.

Each test builds its bad input in tmp_path: a full disk, a signal, a NaN, a damaged
or malicious checkpoint, an out-of-range option. It then checks the message, and that
no checkpoint or log was lost or written where it should not be. The
networks are tiny (32 px, a few thousand parameters), so the file runs in well
under a minute on two cores. Two tests start train_lfw.py as a subprocess to send
it real signals.
"""

import csv
import errno
import itertools
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import models
import optim_state
import train_lfw

REPO = Path(__file__).resolve().parents[1]
IMAGES = 208
TINY = ["--gpu", "-1", "--scale", "32", "--ngf", "8", "--ndf", "4", "--noiseDim", "16",
        "--batchSize", "8", "--nval", "8", "--threads", "1"]
# 8 batches of 4 real images per epoch.
SHORT = TINY + ["--epochSize", "32"]
# 50 batches per epoch, long enough to send a signal in the middle of epoch 1.
LONG = TINY + ["--epochSize", "200", "--epochs", "2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A random 32 px cache of 208 images in the layout data_lfw.py writes."""
    path = tmp_path_factory.mktemp("data") / "tiny_32.hdf5"
    images = np.random.default_rng(0).integers(0, 256, size=(IMAGES, 3, 32, 32), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("lfw", data=images)
        dataset.attrs.update(crop=50, scale=32, count=IMAGES, source="synthetic", seed=1)
    return path


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """A finished 2-epoch run: adversarial.pt (epoch 3 next) and adversarial.pt.old."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    assert run(SHORT + ["--data", cache, "--epochs", 2, "-s", folder]) == 0
    return folder


@pytest.fixture
def run_copy(trained, tmp_path):
    """Return a copy of the trained run that a test may damage. Resuming it writes there."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """An uninterrupted in-process run with the LONG options."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    assert run(LONG + ["--data", cache, "-s", folder]) == 0
    return folder


def run(args):
    return train_lfw.main([str(a) for a in args])


def read_rows(path, drop=("time_s",)):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_finite_weights(ckpt):
    for net in ("G", "D"):
        for key, value in ckpt[net].items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), f"{net}.{key}"


def assert_same_state(a, b):
    """Assert equal weights, optimizer buffers and sgdStates of two checkpoints."""
    for net in ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"
    for state in ("sgdState_D", "sgdState_G"):
        assert a[state].keys() == b[state].keys(), state
        for key, value in a[state].items():
            other = b[state][key]
            if torch.is_tensor(value):
                assert torch.equal(value, other), f"{state}.{key}"
            else:
                assert value == other, f"{state}.{key}"
    for key in ("epoch", "next_batch", "iteration"):
        assert a[key] == b[key], key


def assert_same_run(straight, resumed):
    """Assert that two run folders hold the same training, timings aside."""
    assert_same_state(load(straight / "adversarial.pt"), load(resumed / "adversarial.pt"))
    assert read_rows(straight / "log.csv") == read_rows(resumed / "log.csv")
    epoch_drop = ("time_s", "images_per_s")
    assert read_rows(straight / "epochs.csv", epoch_drop) == read_rows(
        resumed / "epochs.csv", epoch_drop)
    for grid in ("samples_epoch_001.png", "samples_epoch_002.png"):
        assert (straight / grid).read_bytes() == (resumed / grid).read_bytes(), grid


def snapshot(folder):
    """Return the bytes of every file in a folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------
# Atomic checkpoints


class FullDisk:
    """A file whose writes fail with ENOSPC once `limit` bytes are written."""

    def __init__(self, file, limit):
        self.file, self.limit, self.written = file, limit, 0

    def write(self, data):
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.file.write(data)

    def flush(self):
        self.file.flush()


def test_full_disk_keeps_previous_checkpoints(run_copy, monkeypatch, capsys):
    ckpt_path, old_path = run_copy / "adversarial.pt", run_copy / "adversarial.pt.old"
    before = {p: p.read_bytes() for p in (ckpt_path, old_path)}
    real_save, files = torch.save, []

    def save_to_full_disk(obj, f):
        files.append(FullDisk(f, limit=4096))
        real_save(obj, files[-1])

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    capsys.readouterr()
    assert run(["--network", ckpt_path, "--epochs", 3]) == 2
    err = capsys.readouterr().err
    assert files and files[0].written > 0, "the write did not fail midway"
    assert f"cannot write checkpoint {ckpt_path}: No space left on device" in err
    assert f"resume with: python train_lfw.py --network {ckpt_path}" in err
    assert "Traceback" not in err
    for path, data in before.items():
        assert path.read_bytes() == data, path.name
        load(path)
    assert not (run_copy / "adversarial.pt.tmp").exists()

    # Once there is space again, the suggested resume finishes the run.
    monkeypatch.setattr(torch, "save", real_save)
    assert run(["--network", ckpt_path, "--epochs", 3]) == 0
    assert [int(r["iteration"]) for r in read_rows(run_copy / "log.csv")] == list(range(1, 25))
    assert load(ckpt_path)["epoch"] == 4


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_dev_full_first_checkpoint_reports_error(cache, tmp_path, capsys):
    # The kernel fails every write to /dev/full with ENOSPC, as a full disk does.
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "adversarial.pt.tmp").symlink_to("/dev/full")
    assert run(SHORT + ["--data", cache, "--epochs", 1, "-s", folder]) == 2
    err = capsys.readouterr().err
    assert f"cannot write checkpoint {folder / 'adversarial.pt'}: No space left on device" in err
    assert "No checkpoint of this run was written yet" in err
    assert not (folder / "adversarial.pt.tmp").exists()
    assert not (folder / "adversarial.pt").exists()


def test_save_checkpoint_syncs_before_renaming(tmp_path, monkeypatch):
    path = tmp_path / "adversarial.pt"
    train_lfw.save_checkpoint(path, {"step": torch.tensor(1)})
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append(f"rename {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    train_lfw.save_checkpoint(path, {"step": torch.tensor(2)})
    assert events == ["fsync file", "rename adversarial.pt -> adversarial.pt.old",
                      "rename adversarial.pt.tmp -> adversarial.pt", "fsync folder"]
    assert load(path)["step"] == 2
    assert load(tmp_path / "adversarial.pt.old")["step"] == 1


def test_save_checkpoint_crash_midway_keeps_last(tmp_path, monkeypatch):
    path = tmp_path / "adversarial.pt"
    train_lfw.save_checkpoint(path, {"step": torch.tensor(1)})
    train_lfw.save_checkpoint(path, {"step": torch.tensor(2)})

    def crash_midway(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        train_lfw.save_checkpoint(path, {"step": torch.tensor(3)})
    assert load(path)["step"] == 2
    assert load(tmp_path / "adversarial.pt.old")["step"] == 1
    assert not (tmp_path / "adversarial.pt.tmp").exists()


# ---------------------------------------------------------------------------
# Signals and exact resume


def count_rows(path):
    if not path.exists():
        return 0
    return max(path.read_bytes().count(b"\n") - 1, 0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_then_resume_is_exact(cache, reference, tmp_path, signum):
    folder = tmp_path / "run"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    args = [sys.executable, str(REPO / "train_lfw.py")] + LONG + ["--data", str(cache),
                                                                  "-s", str(folder)]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(args, cwd=REPO, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            while count_rows(folder / "log.csv") < 3:
                assert process.poll() is None, f"exited early: {err.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "no log rows after 60 s"
                time.sleep(0.02)
            process.send_signal(signum)
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    ckpt_path = folder / "adversarial.pt"
    assert returncode == 128 + signum, err.read_text()[-2000:]
    assert f"Resume with: python train_lfw.py --network {ckpt_path}" in out.read_text()
    assert "Traceback" not in err.read_text()
    ckpt = load(ckpt_path)  # weights_only=True
    assert ckpt["epoch"] == 1
    assert 1 < ckpt["next_batch"] <= 50, "the signal did not land mid-epoch 1"
    assert count_rows(folder / "log.csv") == ckpt["iteration"]

    assert run(["--network", ckpt_path]) == 0
    assert_same_run(reference, folder)


def kill_self_at(monkeypatch, call, signals):
    """Send `signals` to this process at the `call`-th optimizer step (2 steps per batch)."""
    real_rmsprop, calls = optim_state.OPTIMIZERS["rmsprop"], itertools.count(1)

    def rmsprop(opfunc, x, config, state=None):
        if next(calls) == call:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return real_rmsprop(opfunc, x, config, state)

    monkeypatch.setitem(optim_state.OPTIMIZERS, "rmsprop", rmsprop)


def test_signal_on_last_batch_writes_epoch_checkpoint(cache, tmp_path, monkeypatch, capsys):
    kill_self_at(monkeypatch, call=2 * 8, signals=[signal.SIGTERM])
    assert run(SHORT + ["--data", cache, "--epochs", 2, "-s", tmp_path]) == 143
    out = capsys.readouterr().out
    assert "SIGTERM received: stopped after epoch 1, batch 8" in out
    assert f"Resume with: python train_lfw.py --network {tmp_path / 'adversarial.pt'}" in out
    ckpt = load(tmp_path / "adversarial.pt")
    assert (ckpt["epoch"], ckpt["next_batch"], ckpt["iteration"]) == (2, 1, 8)
    assert len(read_rows(tmp_path / "epochs.csv")) == 1


def test_second_signal_stops_at_once(run_copy, monkeypatch, capsys):
    before = snapshot(run_copy)
    # Two Ctrl-C in the first batch of the resumed epoch 3.
    kill_self_at(monkeypatch, call=1, signals=[signal.SIGINT, signal.SIGINT])
    capsys.readouterr()
    assert run(["--network", run_copy / "adversarial.pt", "--epochs", 3]) == 130
    err = capsys.readouterr().err
    assert "interrupted before a checkpoint could be written" in err
    for name in ("adversarial.pt", "adversarial.pt.old"):
        assert (run_copy / name).read_bytes() == before[name], name
    assert not (run_copy / "adversarial.pt.tmp").exists()


# ---------------------------------------------------------------------------
# NaN and infinite values


def capture_models(monkeypatch, hook_D=None, hook_G=None):
    """Record the networks that train() builds, optionally attaching hooks to them."""
    built, build_D, build_G = {}, models.build_discriminator, models.build_generator

    def discriminator(*args, **kwargs):
        built["D"] = build_D(*args, **kwargs)
        if hook_D:
            hook_D(built["D"])
        return built["D"]

    def generator(*args, **kwargs):
        built["G"] = build_G(*args, **kwargs)
        if hook_G:
            hook_G(built["G"])
        return built["G"]

    monkeypatch.setattr(models, "build_discriminator", discriminator)
    monkeypatch.setattr(models, "build_generator", generator)
    return built


def nan_output_at(call):
    """Return a hook that makes D's `call`-th output in training mode NaN."""
    calls = itertools.count(1)

    def attach(model):
        def hook(module, inputs, output):
            if module.training and next(calls) == call:
                return output * math.nan
            return None

        model.register_forward_hook(hook)

    return attach


def nan_gradient_at(call):
    """Return a hook that makes the `call`-th gradient of a network's first weight NaN."""
    calls = itertools.count(1)

    def attach(model):
        weight = next(model.parameters())
        weight.register_hook(lambda grad: grad * math.nan if next(calls) == call else grad)

    return attach


# Epoch 2, batch 3 of 8-batch epochs. D runs twice per batch in training mode, in its
# own step and in G's step, and each network gets one gradient per batch.
NAN_CASES = {
    "D output": ({"hook_D": nan_output_at(2 * 10 + 1)}, "D's output is nan"),
    "D output in G step": ({"hook_D": nan_output_at(2 * 10 + 2)},
                           "D's output on G's samples is nan"),
    "D gradient": ({"hook_D": nan_gradient_at(8 + 3)}, "D's gradient is nan"),
    "G gradient": ({"hook_G": nan_gradient_at(8 + 3)}, "G's gradient is nan"),
}


@pytest.mark.parametrize("case", NAN_CASES)
def test_nan_stops_before_update(cache, tmp_path, monkeypatch, capsys, case):
    hooks, message = NAN_CASES[case]
    built = capture_models(monkeypatch, **hooks)
    assert run(SHORT + ["--data", cache, "--epochs", 2, "-s", tmp_path]) == 2
    err = capsys.readouterr().err
    assert f"{message} at epoch 2, batch 3" in err
    assert "resume from it with a lower --learningRate" in err
    for name, model in built.items():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), f"{name}.{key} took the NaN update"
    ckpt = load(tmp_path / "adversarial.pt")
    assert (ckpt["epoch"], ckpt["iteration"]) == (2, 8)
    assert_finite_weights(ckpt)
    assert not (tmp_path / "adversarial.pt.tmp").exists()


def test_huge_learning_rate_writes_no_checkpoint(cache, tmp_path, capsys):
    assert run(SHORT + ["--data", cache, "--epochs", 1, "-s", tmp_path, "-r", "1e30"]) == 2
    err = capsys.readouterr().err
    assert "at epoch 1, batch 1; training stopped without writing a checkpoint" in err
    assert "Traceback" not in err
    assert not (tmp_path / "adversarial.pt").exists()


def test_resume_with_lower_learning_rate(run_copy):
    assert run(["--network", run_copy / "adversarial.pt", "--epochs", 3, "-r", "1e-4"]) == 0
    rows = [r for r in read_rows(run_copy / "log.csv") if r["epoch"] == "3"]
    assert len(rows) == 8
    for row in rows:
        assert float(row["lr_D"]) == pytest.approx(1e-4 * 0.99**3, rel=1e-5)
        assert float(row["lr_G"]) == pytest.approx(1e-4 * 0.99**3, rel=1e-5)


# ---------------------------------------------------------------------------
# Checkpoint files


class WritesMarker:
    """Pickles as a call of open(marker, "w"): loading it runs code and creates the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoints_load_weights_only(trained):
    for name in ("adversarial.pt", "adversarial.pt.old"):
        ckpt = load(trained / name)
        assert set(ckpt) == train_lfw.CHECKPOINT_KEYS
        assert_finite_weights(ckpt)


def test_network_rejects_pickle_with_code(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    path, marker = folder / "adversarial.pt", tmp_path / "marker"
    torch.save({"G": WritesMarker(marker), "D": {}, "opt": {}, "epoch": 1}, path)
    # The file does run code when unpickled without weights_only.
    control = tmp_path / "control.pt"
    torch.save({"G": WritesMarker(tmp_path / "control_marker")}, control)
    torch.load(control, weights_only=False)
    assert (tmp_path / "control_marker").exists()

    assert run(["--network", path]) == 2
    err = capsys.readouterr().err
    assert f"rejected checkpoint {path}" in err
    assert "could run code" in err
    assert not marker.exists()
    assert [p.name for p in folder.iterdir()] == ["adversarial.pt"]


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "truncated": (truncate, "truncated or damaged"),
    "empty": (lambda path: path.write_bytes(b""), "truncated or damaged"),
    "garbage": (lambda path: path.write_bytes(b"not a checkpoint\n" * 50), "damaged"),
    "not a dict": (lambda path: torch.save(torch.zeros(3), path), "contains a Tensor"),
    "deleted": (lambda path: path.unlink(), "checkpoint not found"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_checkpoint_suggests_old(run_copy, capsys, damage):
    damage_file, reason = DAMAGES[damage]
    ckpt_path, old_path = run_copy / "adversarial.pt", run_copy / "adversarial.pt.old"
    damage_file(ckpt_path)
    before = snapshot(run_copy)
    capsys.readouterr()
    assert run(["--network", ckpt_path]) == 2
    err = capsys.readouterr().err
    assert reason in err
    assert f"--network {old_path}" in err
    assert "Traceback" not in err
    assert snapshot(run_copy) == before


def test_resume_from_old_after_damage(run_copy):
    truncate(run_copy / "adversarial.pt")
    assert run(["--network", run_copy / "adversarial.pt.old"]) == 0
    ckpt = load(run_copy / "adversarial.pt")
    assert (ckpt["epoch"], ckpt["iteration"]) == (3, 16)
    assert [int(r["iteration"]) for r in read_rows(run_copy / "log.csv")] == list(range(1, 17))


def test_new_run_keeps_existing_checkpoint(cache, run_copy, capsys):
    before = snapshot(run_copy)
    capsys.readouterr()
    assert run(SHORT + ["--data", cache, "--epochs", 1, "-s", run_copy]) == 2
    err = capsys.readouterr().err
    assert f"--save {run_copy} already contains adversarial.pt" in err
    assert f"--network {run_copy / 'adversarial.pt'}" in err
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------------------
# Options


def test_resume_rejects_contradicting_bnD(run_copy, capsys):
    before = snapshot(run_copy)
    capsys.readouterr()
    assert run(["--network", run_copy / "adversarial.pt", "--bnD"]) == 2
    err = capsys.readouterr().err
    assert "--bnD True contradicts the checkpoint" in err
    assert "--bnD False" in err
    assert snapshot(run_copy) == before


OPTION_CASES = {
    "epochs 0": (["--epochs", "0"], "invalid --epochs 0: use a value >= 1"),
    "K 0": (["--K", "0"], "invalid --K 0: use a value >= 1"),
    "margin 0.6": (["--margin", "0.6"], "invalid --margin 0.6: use a value in (0, 0.5)"),
    "nval too large": (["--nval", "500"], f"invalid --nval 500: the data has only {IMAGES} images"),
    "evalSamples too large": (["--evalEvery", "1", "--evalSamples", "500"],
                              f"invalid --evalSamples 500: the data has {IMAGES} images"),
    "evalSamples 1": (["--evalSamples", "1"], "invalid --evalSamples 1: use a value >= 2"),
    "data missing": (["--data", "{tmp}/missing.tgz"], "--data {tmp}/missing.tgz does not exist"),
    "data of other scale": (["--scale", "64"], "was built with scale 32, not the requested 64"),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_invalid_option_rejected_at_start(cache, tmp_path, capsys, case):
    args, message = OPTION_CASES[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    folder = tmp_path / "run"
    assert run(SHORT + ["--data", cache, "-s", folder] + args) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert not folder.exists()


def test_save_path_under_file_reported(cache, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder\n")
    assert run(SHORT + ["--data", cache, "--epochs", 1, "-s", blocker / "run"]) == 2
    err = capsys.readouterr().err
    assert os.strerror(errno.ENOTDIR) in err
    assert str(blocker / "run") in err
    assert blocker.read_text() == "not a folder\n"
