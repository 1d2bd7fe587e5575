"""Tests for sample_lfw.py: latent interpolation, outputs and checkpoint errors.

A module fixture trains a tiny GAN (scale 32, noiseDim 16) for one short epoch on a
synthetic HDF5 cache of random images in tmp_path, and the tests sample from its
checkpoint on the CPU. Broken checkpoints are edited copies of it.
"""

import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import sample_lfw
import train_lfw
from sample_lfw import SamplingError, latent_walk, load_generator, slerp, to_uint8

SCALE = 32
NOISE_DIM = 16
PADDING = 2
TRAIN_ARGS = (
    "--gpu -1 --scale 32 --ngf 8 --ndf 4 --noiseDim 16 --batchSize 8 --nval 8 --epochs 1 "
    "--epochSize 32 --threads 1"
).split()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Return the adversarial.pt of a tiny one-epoch training on random images."""
    root = tmp_path_factory.mktemp("tiny_run")
    cache = root / "tiny.hdf5"
    images = np.random.default_rng(0).integers(0, 256, size=(40, 3, SCALE, SCALE),
                                               dtype=np.uint8)
    with h5py.File(cache, "w") as f:
        dataset = f.create_dataset("lfw", data=images)
        dataset.attrs.update(crop=50, scale=SCALE, count=len(images), source="synthetic",
                             seed=1)
    run = root / "run"
    assert train_lfw.main(TRAIN_ARGS + ["-s", str(run), "--data", str(cache)]) == 0
    return run / "adversarial.pt"


def run_main(capsys, *args):
    """Run sample_lfw.main on the CPU; return (exit code, stdout, stderr)."""
    code = sample_lfw.main([str(a) for a in args] + ["--gpu", "-1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def angle(a, b):
    return torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1)).item()


# ---------------------------------------------------------------------------
# slerp and latent_walk


def test_slerp_endpoints():
    z0, z1 = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-6)
    assert torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-6)
    assert slerp(z0, z1, 0.3).shape == (5, 16)
    assert slerp(z0, z1, 0.3).dtype == z0.dtype


def test_slerp_equal_norms_keep_norm():
    z0, z1 = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    z1 = z1 / z1.norm(dim=1, keepdim=True) * z0.norm(dim=1, keepdim=True)
    for t in torch.linspace(0, 1, 9).tolist():
        norms = slerp(z0, z1, t).norm(dim=1)
        assert torch.allclose(norms, z0.norm(dim=1), rtol=1e-5), t


def test_slerp_different_norms():
    """The norm changes linearly and the direction at constant angular speed."""
    z0 = torch.randn(16, generator=torch.Generator().manual_seed(2))
    z1 = 3 * torch.randn(16, generator=torch.Generator().manual_seed(3))
    total = angle(z0, z1)
    for t in (0.25, 0.5, 0.8):
        z = slerp(z0, z1, t)
        expected_norm = (1 - t) * z0.norm() + t * z1.norm()
        assert torch.isclose(z.norm(), expected_norm, rtol=1e-5)
        assert math.isclose(angle(z0, z), t * total, rel_tol=1e-4)
        assert math.isclose(angle(z, z1), (1 - t) * total, rel_tol=1e-4)


def test_slerp_parallel_falls_back_to_linear():
    z0 = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    cases = {
        "same": z0.clone(),
        "scaled": 2 * z0,
        "opposite": -z0,
        "zero": torch.zeros_like(z0),
    }
    for name, z1 in cases.items():
        z = slerp(z0, z1, 0.25)
        assert torch.isfinite(z).all(), name
        assert torch.allclose(z, 0.75 * z0 + 0.25 * z1, atol=1e-6), name


def test_slerp_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        slerp(torch.zeros(2, 4), torch.zeros(3, 4), 0.5)


def test_latent_walk_loops_through_points():
    points_count, frames, walks = 4, 5, 3
    points = torch.randn(points_count, walks, NOISE_DIM,
                         generator=torch.Generator().manual_seed(5))
    path = latent_walk(points, frames)
    assert path.shape == (points_count * frames, walks, NOISE_DIM)
    for k in range(points_count):
        assert torch.allclose(path[k * frames], points[k], atol=1e-6), k
    assert not torch.allclose(path[-1], points[0], atol=1e-3)
    # Within a segment slerp moves at constant angular speed, so the step from the last
    # frame back to the first equals the steps before it: the loop closes smoothly.
    for w in range(walks):
        closing_step = angle(path[-1, w], path[0, w])
        previous_step = angle(path[-2, w], path[-1, w])
        assert math.isclose(closing_step, previous_step, rel_tol=0.05), w


def test_latent_walk_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 points"):
        latent_walk(torch.zeros(1, NOISE_DIM), 4)
    with pytest.raises(ValueError, match="frames_per_segment"):
        latent_walk(torch.zeros(3, NOISE_DIM), 0)


def test_to_uint8_clamps_and_rounds():
    images = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert to_uint8(images).tolist() == [0, 0, 128, 191, 255, 255]
    assert to_uint8(images).dtype == torch.uint8


# ---------------------------------------------------------------------------
# Outputs


def test_load_generator_reads_architecture(checkpoint):
    generator, saved = load_generator(checkpoint, torch.device("cpu"))
    assert not generator.training
    assert saved["scale"] == SCALE
    with torch.no_grad():
        images = generator(torch.zeros(2, NOISE_DIM))
    assert images.shape == (2, 3, SCALE, SCALE)


def test_grid_deterministic_for_seed(checkpoint, tmp_path, capsys):
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, (5, 5, 6)):
        code, out, _ = run_main(capsys, checkpoint, "--grid", 3, "--seed", seed, "--out", path)
        assert code == 0
        assert str(path) in out
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    side = 3 * (SCALE + PADDING) + PADDING
    assert Image.open(paths[0]).size == (side, side)


def test_grid_default_path(checkpoint, capsys):
    code, out, _ = run_main(capsys, checkpoint, "--grid", 2, "--seed", 7)
    path = checkpoint.parent / "samples_grid_seed7.png"
    assert code == 0
    assert path.is_file()
    assert str(path) in out


def test_gpu_falls_back_to_cpu(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = sample_lfw.main([str(checkpoint), "--gpu", "0", "--grid", "1",
                            "--out", str(tmp_path / "g.png")])
    assert code == 0
    assert "falls back to the CPU" in capsys.readouterr().out


def test_walk_gif_frames_and_loop(checkpoint, tmp_path, capsys):
    gif, frames_dir = tmp_path / "walk.gif", tmp_path / "frames"
    code, out, _ = run_main(capsys, checkpoint, "--walk", gif, "--points", 3, "--frames", 4,
                            "--walks", 2, "--duration", 50, "--framesDir", frames_dir)
    assert code == 0
    assert str(gif) in out
    tile = 128  # 32 px tiles are zoomed 4x by default
    size = (2 * (tile + PADDING) + PADDING, tile + 2 * PADDING)
    with Image.open(gif) as image:
        assert image.n_frames == 3 * 4
        assert image.info["loop"] == 0
        assert image.info["duration"] == 50
        assert image.size == size
    pngs = sorted(frames_dir.glob("frame_*.png"))
    assert len(pngs) == 3 * 4
    assert Image.open(pngs[0]).size == size
    assert pngs[0].read_bytes() != pngs[1].read_bytes()


def test_walk_tiles_in_near_square_grid(checkpoint, tmp_path, capsys):
    gif = tmp_path / "walk.gif"
    code, _, _ = run_main(capsys, checkpoint, "--walk", gif, "--points", 2, "--frames", 1,
                          "--walks", 5, "--zoom", 1)
    assert code == 0
    with Image.open(gif) as image:
        assert image.n_frames == 2
        assert image.size == (3 * (SCALE + PADDING) + PADDING, 2 * (SCALE + PADDING) + PADDING)


def test_npz_shape_dtype_batches(checkpoint, tmp_path, capsys):
    small, large = tmp_path / "small.npz", tmp_path / "large.samples"
    assert run_main(capsys, checkpoint, "--npz", small, "--n", 10, "--batchSize", 4)[0] == 0
    assert run_main(capsys, checkpoint, "--npz", large, "--n", 10, "--batchSize", 10)[0] == 0
    assert large.is_file()  # the name is kept as given, without .npz appended
    with np.load(small) as data:
        assert list(data) == ["samples"]
        samples = data["samples"]
    assert samples.shape == (10, SCALE, SCALE, 3)
    assert samples.dtype == np.uint8
    with np.load(large) as data:
        # Eval-mode G draws each sample alone, so the batch size may change only rounding.
        difference = np.abs(samples.astype(int) - data["samples"].astype(int))
    assert difference.max() <= 1


# ---------------------------------------------------------------------------
# Errors


def edited_checkpoint(checkpoint, path, edit):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize("option, value, trained", [("--scale", 64, 32),
                                                    ("--noiseDim", 512, 16)])
def test_contradicting_option_rejected(checkpoint, capsys, option, value, trained):
    code, _, err = run_main(capsys, checkpoint, option, value)
    assert_one_line_error(code, err, f"{option} {value}", f"{option} {trained}")


@pytest.mark.parametrize("name, edit, fragments", [
    ("shape", lambda c: c["G"].__setitem__("linear.weight", torch.zeros(512, 17)),
     ["linear.weight", "(512, 17)", "(512, 16)"]),
    ("opt", lambda c: c["opt"].__setitem__("ngf", 16), ["ngf 16", "(1024, 16)"]),
    ("missing", lambda c: c["G"].pop("body.1.bias"), ["missing", "body.1.bias"]),
    ("nan", lambda c: c["G"]["body.1.weight"].view(-1).__setitem__(0, float("nan")),
     ["body.1.weight", "NaN"]),
    ("scale", lambda c: c["opt"].__setitem__("scale", 48), ["invalid scale 48"]),
    ("noiseDim", lambda c: c["opt"].__setitem__("noiseDim", "16"), ["noiseDim='16'"]),
])
def test_tampered_checkpoint_rejected(checkpoint, tmp_path, capsys, name, edit, fragments):
    path = edited_checkpoint(checkpoint, tmp_path / f"{name}.pt", edit)
    code, _, err = run_main(capsys, path)
    assert_one_line_error(code, err, str(path), *fragments)


@pytest.mark.parametrize("name, write, fragment", [
    ("random.pt", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "zip"),
    ("notes.txt", lambda p: p.write_text("not a checkpoint\n"), "zip"),
    ("keys.pt", lambda p: torch.save({"x": torch.zeros(2)}, p), "missing ['G', 'opt']"),
    ("tensor.pt", lambda p: torch.save(torch.zeros(2), p), "contains a Tensor"),
    ("code.pt", lambda p: torch.save({"G": {}, "opt": print}, p), "Unsupported global"),
])
def test_non_checkpoint_rejected(tmp_path, capsys, name, write, fragment):
    path = tmp_path / name
    write(path)
    code, _, err = run_main(capsys, path)
    assert_one_line_error(code, err, str(path), fragment)


def test_truncated_checkpoint_rejected(checkpoint, tmp_path, capsys):
    path = tmp_path / "truncated.pt"
    path.write_bytes(checkpoint.read_bytes()[:3000])
    code, _, err = run_main(capsys, path)
    assert_one_line_error(code, err, "truncated")


def test_missing_checkpoint_rejected(tmp_path, capsys):
    code, _, err = run_main(capsys, tmp_path / "nope.pt")
    assert_one_line_error(code, err, "not found", "nope.pt")
    code, _, err = run_main(capsys, tmp_path)
    assert_one_line_error(code, err, "is a folder")


@pytest.mark.parametrize("option, value", [("--grid", 0), ("--points", 1), ("--frames", 0),
                                           ("--n", 0), ("--walks", 0), ("--duration", 5)])
def test_bad_option_rejected(checkpoint, capsys, option, value):
    code, _, err = run_main(capsys, checkpoint, option, value)
    assert_one_line_error(code, err, f"invalid {option} {value}")


def test_load_generator_raises_sampling_error(tmp_path):
    with pytest.raises(SamplingError, match="not found"):
        load_generator(tmp_path / "nope.pt", torch.device("cpu"))


def test_cli_error_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, sample_lfw.__file__, str(tmp_path / "nope.pt"), "--gpu", "-1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: checkpoint not found")
    assert len(result.stderr.strip().splitlines()) == 1
