"""Tests for metrics: SWD, face-detection rate, diversity, evaluate and the command line.

Synthetic sets are smooth random images with pixel noise, made in the test. Tests on
real faces build a 64 px cache from the 509-image LFW sample archive into a temporary
folder and skip when the archive is absent. Face-detection tests skip without
scikit-image.
"""

import math
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data_lfw
import metrics

MINI_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-deepfunneled-mini.tgz"
REAL_COUNT = 200  # images per real set; two disjoint sets fit in the 509-image sample
FEW_PATCHES = 32  # patches per image where the test does not need the full 128


def synthetic_images(count, side=32, seed=0) -> np.ndarray:
    """Return uint8 (count, 3, side, side) images: bicubic 16x16 noise plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 16, 16, generator=generator) * 255
    smooth = F.interpolate(coarse, size=side, mode="bicubic", align_corners=False)
    noisy = smooth + 4 * torch.randn(count, 3, side, side, generator=generator)
    return noisy.round().clamp(0, 255).to(torch.uint8).numpy()


def blurred(images: np.ndarray) -> np.ndarray:
    """Blur uint8 images with one pyramid down-and-up step."""
    pixels = torch.from_numpy(images).to(torch.float32)
    smooth = metrics.pyr_up(metrics.pyr_down(pixels))
    return smooth.round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def real_crops(tmp_path_factory):
    """Return two disjoint sets of REAL_COUNT real 64 px LFW crops, uint8 (N, 3, 64, 64)."""
    if not MINI_ARCHIVE.is_file():
        pytest.skip(f"LFW sample archive {MINI_ARCHIVE} not found")
    out = tmp_path_factory.mktemp("lfw") / "mini64.hdf5"
    images = data_lfw.load_uint8(data_lfw.build_cache(MINI_ARCHIVE, out, scale=64))
    return images[:REAL_COUNT], images[REAL_COUNT : 2 * REAL_COUNT]


# ---------------------------------------------------------------------------
# Input conversion and pyramid
# ---------------------------------------------------------------------------


def test_to_pixels_maps_float_range_to_uint8_scale():
    images = np.array([-1.0, 0.0, 1.0], dtype=np.float32).reshape(1, 3, 1, 1)
    images = np.broadcast_to(images, (1, 3, 16, 16))
    pixels = metrics.to_pixels(images)
    assert pixels.dtype == torch.float32
    assert pixels[0, :, 0, 0].tolist() == [0.0, 127.5, 255.0]


def test_to_pixels_rejects_out_of_range_float():
    images = np.full((1, 3, 16, 16), 2.0, dtype=np.float32)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.to_pixels(images)


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (2, 3, 16, 8), (3, 16, 16), (0, 3, 16, 16)])
def test_to_pixels_rejects_bad_shape(shape):
    with pytest.raises(ValueError):
        metrics.to_pixels(np.zeros(shape, dtype=np.uint8))


def test_to_pixels_rejects_nan():
    images = np.full((1, 3, 16, 16), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        metrics.to_pixels(images)


def test_to_pixels_rejects_integer_non_uint8():
    with pytest.raises(TypeError, match="uint8 or float"):
        metrics.to_pixels(np.zeros((1, 3, 16, 16), dtype=np.int32))


@pytest.mark.parametrize(
    "side, sides", [(64, [64, 32, 16]), (32, [32, 16]), (16, [16]), (48, [48, 24])]
)
def test_pyramid_sides(side, sides):
    assert metrics.pyramid_sides(side) == sides


@pytest.mark.parametrize("side", [8, 66])
def test_pyramid_sides_rejects_bad_side(side):
    with pytest.raises(ValueError):
        metrics.pyramid_sides(side)


def test_pyr_down_matches_scipy_mirror_convolution():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    images = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256
    expected = scipy_ndimage.convolve(images, kernel[None, None], mode="mirror")[
        :, :, ::2, ::2
    ]
    result = metrics.pyr_down(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_laplacian_pyramid_reconstructs_image():
    images = torch.from_numpy(synthetic_images(2)).to(torch.float32)
    band, coarse = metrics.laplacian_pyramid(images, 2)
    assert coarse.shape == (2, 3, 16, 16)
    torch.testing.assert_close(band + metrics.pyr_up(coarse), images)


# ---------------------------------------------------------------------------
# Sliced Wasserstein distance
# ---------------------------------------------------------------------------


def test_swd_keys_for_64_px():
    images = synthetic_images(4, side=64)
    result = metrics.swd(images, images, n_patches=4)
    assert list(result) == ["swd_64", "swd_32", "swd_16", "swd_avg"]


def test_swd_keys_for_32_px():
    images = synthetic_images(4, side=32)
    result = metrics.swd(images, images, n_patches=4)
    assert list(result) == ["swd_32", "swd_16", "swd_avg"]


def test_swd_identical_sets_is_zero():
    images = synthetic_images(50)
    result = metrics.swd(images, images, n_patches=FEW_PATCHES)
    for name, value in result.items():
        assert value == pytest.approx(0.0, abs=1e-6), name


def test_swd_is_symmetric():
    a = synthetic_images(50, seed=1)
    b = synthetic_images(50, seed=2)
    forward = metrics.swd(a, b, n_patches=FEW_PATCHES)
    backward = metrics.swd(b, a, n_patches=FEW_PATCHES)
    assert forward == pytest.approx(backward)


def test_swd_deterministic_for_seed():
    a = synthetic_images(50, seed=1)
    b = synthetic_images(50, seed=2)
    first = metrics.swd(a, b, n_patches=FEW_PATCHES, seed=3)
    second = metrics.swd(a, b, n_patches=FEW_PATCHES, seed=3)
    other_seed = metrics.swd(a, b, n_patches=FEW_PATCHES, seed=4)
    assert first == second
    assert first["swd_avg"] != other_seed["swd_avg"]


def test_swd_same_for_uint8_and_float():
    a = synthetic_images(50, seed=1)
    b = synthetic_images(50, seed=2)
    from_uint8 = metrics.swd(a, b, n_patches=FEW_PATCHES)
    from_float = metrics.swd(data_lfw.to_float(a), data_lfw.to_float(b), n_patches=FEW_PATCHES)
    for name, value in from_uint8.items():
        assert from_float[name] == pytest.approx(value, rel=1e-3), name


def test_swd_mismatched_counts_raise():
    with pytest.raises(ValueError, match="same shape"):
        metrics.swd(synthetic_images(10), synthetic_images(11), n_patches=4)


def test_swd_mismatched_sizes_raise():
    with pytest.raises(ValueError, match="same shape"):
        metrics.swd(synthetic_images(10, side=32), synthetic_images(10, side=64), n_patches=4)


@pytest.mark.parametrize("name", ["n_patches", "n_repeats", "n_dirs"])
def test_swd_rejects_non_positive_counts(name):
    images = synthetic_images(4)
    with pytest.raises(ValueError, match=name):
        metrics.swd(images, images, **{name: 0})


def test_swd_blur_exceeds_sampling_floor():
    # Two 200-image sets give a floor of about 14 (swd_avg), the blurred set about 50.
    a = synthetic_images(200, seed=1)
    b = synthetic_images(200, seed=2)
    floor = metrics.swd(a, b)
    blur = metrics.swd(a, blurred(b))
    assert blur["swd_32"] > 3 * floor["swd_32"]
    assert blur["swd_avg"] > 2 * floor["swd_avg"]


def test_swd_ignores_affine_colour_change():
    # Each set is normalized per channel on its own, so 0.5 * x + 60 (no clipping)
    # changes nothing but float rounding.
    images = synthetic_images(50)
    changed = (0.5 * images.astype(np.float32) + 60) / 127.5 - 1
    result = metrics.swd(images, changed, n_patches=FEW_PATCHES)
    assert result["swd_avg"] < 0.05


def test_swd_noise_far_from_smooth_images():
    images = synthetic_images(200, seed=1)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    floor = metrics.swd(images, synthetic_images(200, seed=2))
    result = metrics.swd(images, noise)
    assert result["swd_32"] > 3 * floor["swd_32"]
    assert result["swd_avg"] > 2 * floor["swd_avg"]


def test_swd_real_crops_floor(real_crops):
    real_a, real_b = real_crops
    result = metrics.swd(real_a, real_b)
    # 200 against 200 crops of the full 64 px LFW cache give swd_avg of about 21.
    assert 5 < result["swd_avg"] < 45


def test_swd_real_crops_blur_and_shift(real_crops):
    real_a, real_b = real_crops
    floor = metrics.swd(real_a, real_b, n_patches=FEW_PATCHES)
    blur = metrics.swd(real_a, blurred(real_b), n_patches=FEW_PATCHES)
    brighter = np.clip(data_lfw.to_float(real_b) + 0.3, -1, 1)
    shift = metrics.swd(real_a, brighter, n_patches=FEW_PATCHES)
    assert blur["swd_64"] > 3 * floor["swd_64"]
    assert blur["swd_avg"] > 2 * floor["swd_avg"]
    # A brightness shift only matters through clipping, so it stays near the floor.
    assert shift["swd_avg"] < 1.5 * floor["swd_avg"]


# ---------------------------------------------------------------------------
# Face-detection rate
# ---------------------------------------------------------------------------


def test_face_rate_noise_near_zero():
    pytest.importorskip("skimage")
    noise = np.random.default_rng(0).integers(0, 256, (50, 3, 64, 64), dtype=np.uint8)
    assert metrics.face_detection_rate(noise) <= 0.02


def test_face_rate_real_crops_high(real_crops):
    pytest.importorskip("skimage")
    real_a, _ = real_crops
    assert metrics.face_detection_rate(real_a) >= 0.9


def test_face_rate_real_crops_at_32_px(real_crops):
    pytest.importorskip("skimage")
    real_a, _ = real_crops
    small = F.interpolate(torch.from_numpy(real_a[:100]).float(), size=32, mode="area")
    small = small.round().clamp(0, 255).to(torch.uint8).numpy()
    assert metrics.face_detection_rate(small) >= 0.85


def test_face_rate_upside_down_crops_low(real_crops):
    pytest.importorskip("skimage")
    real_a, _ = real_crops
    upside_down = np.ascontiguousarray(real_a[:100, :, ::-1, :])
    assert metrics.face_detection_rate(upside_down) <= 0.4


def test_face_rate_missing_skimage_raises(monkeypatch):
    for name in ("skimage", "skimage.data", "skimage.feature"):
        monkeypatch.setitem(sys.modules, name, None)
    metrics._face_cascade.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install scikit-image"):
            metrics.face_detection_rate(synthetic_images(2))
    finally:
        metrics._face_cascade.cache_clear()


def test_evaluate_without_skimage_warns_once(monkeypatch):
    for name in ("skimage", "skimage.data", "skimage.feature"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(metrics, "_warned_missing_skimage", False)
    metrics._face_cascade.cache_clear()
    images = synthetic_images(10)
    try:
        with pytest.warns(RuntimeWarning, match="pip install scikit-image"):
            first = metrics.evaluate(images, images)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = metrics.evaluate(images, images)
    finally:
        metrics._face_cascade.cache_clear()
    assert math.isnan(first["face_rate"])
    assert math.isnan(second["face_rate"])


# ---------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------


def test_diversity_identical_copies_zero():
    reference = synthetic_images(50)
    copies = np.repeat(reference[:1], 50, axis=0)
    assert metrics.diversity(copies, reference) == pytest.approx(0.0, abs=1e-6)


def test_diversity_raw_is_rms_pixel_distance():
    black = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    grey = np.full((1, 3, 32, 32), 100, dtype=np.uint8)
    pair = np.concatenate([black, grey])
    assert metrics.diversity(pair, n_pairs=10) == pytest.approx(100.0, rel=1e-5)


def test_diversity_accepts_float_reference():
    images = synthetic_images(50)
    raw = metrics.diversity(images)
    assert metrics.diversity(images, reference=raw / 2) == pytest.approx(2.0)


def test_diversity_real_crops_near_one(real_crops):
    real_a, real_b = real_crops
    assert 0.85 < metrics.diversity(real_b, reference=real_a) < 1.15


def test_diversity_mean_face_near_zero(real_crops):
    real_a, _ = real_crops
    mean_face = real_a.astype(np.float32).mean(axis=0, keepdims=True)
    noise = np.random.default_rng(0).normal(0, 10, real_a.shape)
    samples = np.clip(mean_face + noise, 0, 255).astype(np.uint8)
    assert metrics.diversity(samples, reference=real_a) < 0.1


def test_diversity_rejects_single_image():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.diversity(synthetic_images(1))


def test_diversity_rejects_size_mismatch():
    with pytest.raises(ValueError, match="same image size"):
        metrics.diversity(synthetic_images(4, side=32), synthetic_images(4, side=64))


def test_diversity_rejects_zero_reference():
    copies = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match="reference distance"):
        metrics.diversity(synthetic_images(4), reference=copies)


# ---------------------------------------------------------------------------
# evaluate, reference_values and the command line
# ---------------------------------------------------------------------------


def test_evaluate_keys_and_types():
    a = synthetic_images(20, seed=1)
    b = synthetic_images(20, seed=2)
    result = metrics.evaluate(b, a)
    assert list(result) == ["swd_32", "swd_16", "swd_avg", "face_rate", "diversity"]
    for name, value in result.items():
        assert isinstance(value, float), name


def test_reference_values_is_evaluate_of_second_set():
    a = synthetic_images(20, seed=1)
    b = synthetic_images(20, seed=2)
    reference = metrics.reference_values(a, b)
    evaluated = metrics.evaluate(b, a)
    assert reference.keys() == evaluated.keys()
    for name in ("swd_avg", "diversity"):
        assert reference[name] == evaluated[name], name


def write_cache(path, images):
    with h5py.File(path, "w") as file:
        file.create_dataset(data_lfw.DATASET_NAME, data=images)
    return path


def parse_output(text):
    lines = text.strip().splitlines()
    return {name: float(value) for name, value in (line.split("=") for line in lines)}


def test_cli_fake_npz(tmp_path, capsys):
    real = write_cache(tmp_path / "real.hdf5", synthetic_images(30, seed=1))
    fake = tmp_path / "samples.npz"
    np.savez(fake, images=synthetic_images(30, seed=2).transpose(0, 2, 3, 1))
    code = metrics.main(["--real", str(real), "--fake", str(fake), "--n", "20"])
    assert code == 0
    result = parse_output(capsys.readouterr().out)
    assert list(result) == ["swd_32", "swd_16", "swd_avg", "face_rate", "diversity"]
    assert result["swd_avg"] > 0


def test_cli_npz_same_as_evaluate(tmp_path, capsys):
    real_images = synthetic_images(20, seed=1)
    fake_images = synthetic_images(20, seed=2)
    real = write_cache(tmp_path / "real.hdf5", real_images)
    fake = tmp_path / "samples.npz"
    np.savez(fake, fake_images.transpose(0, 2, 3, 1))
    assert metrics.main(["--real", str(real), "--fake", str(fake), "--n", "20"]) == 0
    printed = parse_output(capsys.readouterr().out)
    expected = metrics.evaluate(fake_images, real_images)
    assert printed["swd_avg"] == pytest.approx(expected["swd_avg"], abs=1e-4)
    assert printed["diversity"] == pytest.approx(expected["diversity"], abs=1e-4)


def test_cli_real_vs_real(tmp_path, capsys):
    real = write_cache(tmp_path / "real.hdf5", synthetic_images(40))
    code = metrics.main(["--real", str(real), "--real-vs-real", "--n", "20"])
    assert code == 0
    result = parse_output(capsys.readouterr().out)
    assert result["swd_avg"] > 0
    assert 0.7 < result["diversity"] < 1.3


def test_cli_too_few_images(tmp_path, capsys):
    real = write_cache(tmp_path / "real.hdf5", synthetic_images(30))
    code = metrics.main(["--real", str(real), "--real-vs-real", "--n", "20"])
    assert code == 2
    assert "Pass a smaller --n" in capsys.readouterr().err


def test_cli_npz_without_known_key(tmp_path, capsys):
    real = write_cache(tmp_path / "real.hdf5", synthetic_images(4))
    fake = tmp_path / "samples.npz"
    np.savez(fake, a=synthetic_images(4), b=synthetic_images(4))
    code = metrics.main(["--real", str(real), "--fake", str(fake), "--n", "4"])
    assert code == 2
    assert "images or samples" in capsys.readouterr().err


def test_cli_needs_fake_or_real_vs_real(tmp_path):
    real = write_cache(tmp_path / "real.hdf5", synthetic_images(4))
    with pytest.raises(SystemExit):
        metrics.main(["--real", str(real)])
