"""Tests for data_lfw: building, validating and loading the LFW HDF5 cache.

Every test builds its own small synthetic archive, folder or cache under tmp_path, with
the real LFW layout (lfw-deepfunneled/<Person>/<Person>_0001.jpg). Downloads are mocked,
and an autouse fixture makes any unmocked urlopen call fail. One test uses the real
509-image LFW sample archive and skips when it is absent.
"""

import gzip
import hashlib
import io
import logging
import re
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import data_lfw
from data_lfw import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MINI_ARCHIVE = SHARED_DATA / "lfw-deepfunneled-mini.tgz"
SCALE = 16  # small output side keeps the builds fast
PEOPLE = ("Ann_Lee", "Bob_Ray", "Cy_Young", "Dee_Dee")
RED = (255, 0, 0)
BLUE = (0, 0, 255)


# ---------------------------------------------------------------------------
# Builders of synthetic inputs
# ---------------------------------------------------------------------------


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def random_face(rng: np.random.Generator, size=(250, 250)) -> Image.Image:
    """Return a smooth random RGB image, so that its JPEG stays small."""
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)


def bordered_image(size, border, outer=RED, inner=BLUE) -> Image.Image:
    """Return an image of the outer colour with an inner rectangle inset by border (x, y)."""
    width, height = size
    image = Image.new("RGB", size, outer)
    image.paste(inner, (border[0], border[1], width - border[0], height - border[1]))
    return image


def make_lfw_folder(root: Path, count: int = 12, seed: int = 0) -> Path:
    """Write count random 250x250 JPEGs into root/lfw-deepfunneled/<Person>/ folders."""
    rng = np.random.default_rng(seed)
    folder = root / "lfw-deepfunneled"
    for i in range(count):
        person = PEOPLE[i % len(PEOPLE)]
        path = folder / person / f"{person}_{i // len(PEOPLE) + 1:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(random_face(rng), quality=90))
    return folder


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tgz(path: Path, folder: Path | None = None, extra: dict | None = None) -> Path:
    """Pack folder as lfw-deepfunneled/ into a .tgz and add the extra {name: bytes}."""
    with tarfile.open(path, "w:gz") as tar:
        if folder is not None:
            tar.add(folder, arcname="lfw-deepfunneled")
        for name, data in (extra or {}).items():
            add_member(tar, name, data)
    return path


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def read_cache(path: Path):
    with h5py.File(path, "r") as file:
        dataset = file["lfw"]
        return dataset[()], dict(dataset.attrs)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a test tried to open a URL without mocking urlopen")

    monkeypatch.setattr(urllib.request, "urlopen", fail)


@pytest.fixture
def lfw_tgz(tmp_path) -> Path:
    folder = make_lfw_folder(tmp_path / "src")
    return make_tgz(tmp_path / "lfw-deepfunneled.tgz", folder)


def build(source, out, **options) -> Path:
    options.setdefault("scale", SCALE)
    return data_lfw.build_cache(source, out, **options)


# ---------------------------------------------------------------------------
# Cache contents
# ---------------------------------------------------------------------------


def test_cache_path_names():
    assert data_lfw.cache_path() == Path("data/lfw_crop50_64.hdf5")
    assert data_lfw.cache_path(32, 10, "/x") == Path("/x/lfw_crop10_32.hdf5")


def test_build_cache_shape_and_attrs(lfw_tgz, tmp_path):
    out = build(lfw_tgz, tmp_path / "cache" / "lfw.hdf5", seed=3)

    images, attrs = read_cache(out)
    assert out == tmp_path / "cache" / "lfw.hdf5"
    assert images.shape == (12, 3, SCALE, SCALE)
    assert images.dtype == np.uint8
    assert attrs["crop"] == 50
    assert attrs["scale"] == SCALE
    assert attrs["count"] == 12
    assert attrs["seed"] == 3
    assert attrs["source"] == str(lfw_tgz.resolve())
    assert attrs["skipped"] == 0
    assert files_in(tmp_path / "cache") == {"lfw.hdf5"}


def test_build_cache_matches_reference_pipeline(lfw_tgz, tmp_path):
    """Sorted names, crop 50 px, bicubic resize, then RandomState(seed) permutation."""
    out = build(lfw_tgz, tmp_path / "lfw.hdf5", seed=7)

    folder = tmp_path / "src" / "lfw-deepfunneled"
    expected = []
    for path in sorted(folder.rglob("*.jpg"), key=lambda p: p.relative_to(folder).as_posix()):
        with Image.open(path) as image:
            small = image.crop((50, 50, 200, 200)).resize((SCALE, SCALE), Image.BICUBIC)
            expected.append(np.asarray(small).transpose(2, 0, 1))
    expected = np.stack(expected)[np.random.RandomState(7).permutation(12)]
    images, _ = read_cache(out)
    np.testing.assert_array_equal(images, expected)


def test_build_cache_deterministic_for_seed(lfw_tgz, tmp_path):
    first, _ = read_cache(build(lfw_tgz, tmp_path / "a.hdf5", seed=1))
    again, _ = read_cache(build(lfw_tgz, tmp_path / "b.hdf5", seed=1, workers=1))
    other, _ = read_cache(build(lfw_tgz, tmp_path / "c.hdf5", seed=2))

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert sorted(map(bytes, first)) == sorted(map(bytes, other))


def test_folder_and_archive_same_cache(lfw_tgz, tmp_path):
    from_archive, _ = read_cache(build(lfw_tgz, tmp_path / "a.hdf5"))
    from_folder, attrs = read_cache(build(tmp_path / "src", tmp_path / "f.hdf5"))

    np.testing.assert_array_equal(from_archive, from_folder)
    assert attrs["source"] == str((tmp_path / "src").resolve())


def test_member_order_does_not_matter(lfw_tgz, tmp_path):
    folder = tmp_path / "src" / "lfw-deepfunneled"
    reversed_tgz = tmp_path / "reversed.tgz"
    with tarfile.open(reversed_tgz, "w:gz") as tar:
        for path in sorted(folder.rglob("*.jpg"), reverse=True):
            tar.add(path, arcname=f"lfw-deepfunneled/{path.relative_to(folder).as_posix()}")

    in_order, _ = read_cache(build(lfw_tgz, tmp_path / "a.hdf5"))
    reversed_order, _ = read_cache(build(reversed_tgz, tmp_path / "r.hdf5"))

    np.testing.assert_array_equal(in_order, reversed_order)


def test_crop_removes_red_border(tmp_path):
    folder = tmp_path / "src" / "lfw-deepfunneled" / "Ann_Lee"
    folder.mkdir(parents=True)
    image = bordered_image((250, 250), (50, 50))
    (folder / "Ann_Lee_0001.jpg").write_bytes(jpeg_bytes(image, quality=100, subsampling=0))

    cropped, _ = read_cache(build(tmp_path / "src", tmp_path / "crop50.hdf5"))
    uncropped, _ = read_cache(build(tmp_path / "src", tmp_path / "crop0.hdf5", crop=0))

    red, green, blue = cropped[0].astype(int)
    assert red.max() < 40
    assert green.max() < 40
    assert blue.min() > 215
    corner = uncropped[0, :, 0, 0].astype(int)
    assert corner[0] > 215
    assert corner[2] < 40


def test_other_size_cropped_proportionally(tmp_path, caplog):
    folder = tmp_path / "src" / "Ann_Lee"
    folder.mkdir(parents=True)
    # crop 50 of 250 is 20% per side: 100 px of 500 wide, 60 px of 300 high.
    image = bordered_image((500, 300), (100, 60))
    (folder / "Ann_Lee_0001.jpg").write_bytes(jpeg_bytes(image, quality=100, subsampling=0))
    caplog.set_level(logging.INFO, logger="data_lfw")

    images, attrs = read_cache(build(tmp_path / "src", tmp_path / "lfw.hdf5"))

    red, _, blue = images[0].astype(int)
    assert red.max() < 40
    assert blue.min() > 215
    assert attrs["resized"] == 1
    assert "1 not 250x250" in caplog.text


def test_grayscale_and_cmyk_converted(tmp_path, caplog):
    folder = make_lfw_folder(tmp_path / "src")
    gray = Image.new("L", (250, 250), 128)
    (folder / "Ann_Lee" / "Ann_Lee_0100.jpg").write_bytes(jpeg_bytes(gray))
    cmyk = Image.new("CMYK", (250, 250), (0, 255, 255, 0))
    (folder / "Bob_Ray" / "Bob_Ray_0100.jpg").write_bytes(jpeg_bytes(cmyk))
    caplog.set_level(logging.INFO, logger="data_lfw")

    images, attrs = read_cache(build(tmp_path / "src", tmp_path / "lfw.hdf5", seed=1))

    assert images.shape == (14, 3, SCALE, SCALE)
    assert attrs["converted"] == 2
    assert "2 converted to RGB (1 CMYK, 1 L)" in caplog.text
    gray_rows = [img for img in images if np.all(np.abs(img.astype(int) - 128) <= 2)]
    assert len(gray_rows) == 1
    red_rows = [img for img in images if img[0].min() > 200 and img[1:].max() < 60]
    assert len(red_rows) == 1


def test_crop_and_scale_validated(lfw_tgz, tmp_path):
    with pytest.raises(DataError, match="crop must be an integer from 0 to 124"):
        build(lfw_tgz, tmp_path / "lfw.hdf5", crop=125)
    with pytest.raises(DataError, match="scale must be a positive integer"):
        build(lfw_tgz, tmp_path / "lfw.hdf5", scale=0)
    assert not (tmp_path / "lfw.hdf5").exists()


# ---------------------------------------------------------------------------
# Loading and float conversion
# ---------------------------------------------------------------------------


def test_to_float_numpy_values():
    pixels = np.array([0, 1, 127, 128, 255], dtype=np.uint8)

    result = data_lfw.to_float(pixels)

    assert isinstance(result, np.ndarray)
    assert result.dtype == np.float32
    assert result[0] == -1.0
    assert result[-1] == 1.0
    np.testing.assert_allclose(result, pixels / 127.5 - 1, atol=1e-6)


def test_to_float_torch_values():
    pixels = torch.tensor([0, 127, 255], dtype=torch.uint8)

    result = data_lfw.to_float(pixels)

    assert isinstance(result, torch.Tensor)
    assert result.dtype == torch.float32
    assert result[0].item() == -1.0
    assert result[-1].item() == 1.0


def test_to_float_rejects_float_input():
    with pytest.raises(TypeError, match="float32"):
        data_lfw.to_float(np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        data_lfw.to_float(torch.zeros(3))


def test_load_lfw_float_range(lfw_tgz, tmp_path):
    out = build(lfw_tgz, tmp_path / "lfw.hdf5")

    pixels = data_lfw.load_uint8(out)
    images = data_lfw.load_lfw(out)

    assert pixels.dtype == np.uint8
    assert images.dtype == np.float32
    assert images.shape == (12, 3, SCALE, SCALE)
    assert images.min() >= -1.0
    assert images.max() <= 1.0
    np.testing.assert_array_equal(images, data_lfw.to_float(pixels))


def test_load_uint8_rejects_non_hdf5(tmp_path):
    path = tmp_path / "lfw.hdf5"
    path.write_text("not hdf5")

    with pytest.raises(DataError, match="not a readable HDF5 file") as info:
        data_lfw.load_uint8(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------
# Bad sources
# ---------------------------------------------------------------------------


def test_missing_source_path(tmp_path):
    missing = tmp_path / "nope.tgz"
    cache_dir = tmp_path / "data"

    with pytest.raises(DataError, match="does not exist") as info:
        data_lfw.build_cache(missing, cache_dir / "lfw.hdf5")
    assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="does not exist") as info:
        data_lfw.prepare_data(missing, cache_dir=cache_dir)
    assert str(missing) in str(info.value)
    assert not cache_dir.exists()


def plain_tar_bytes(tmp_path) -> bytes:
    path = tmp_path / "plain.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, "lfw-deepfunneled/A/A_0001.jpg", jpeg_bytes(Image.new("RGB", (250, 250))))
    return path.read_bytes()


@pytest.mark.parametrize(
    "content",
    [
        lambda tmp_path: b"this is a text file, not an archive\n",
        lambda tmp_path: b"",
        lambda tmp_path: gzip.compress(b"gzip but not tar " * 100),
        plain_tar_bytes,
    ],
    ids=["text", "empty", "gzip-not-tar", "uncompressed-tar"],
)
def test_not_gzip_tar_rejected(tmp_path, content):
    archive = tmp_path / "lfw-deepfunneled.tgz"
    archive.write_bytes(content(tmp_path))
    cache_dir = tmp_path / "data"

    with pytest.raises(DataError, match="not a readable gzip-compressed tar") as info:
        data_lfw.prepare_data(archive, scale=SCALE, cache_dir=cache_dir)
    assert str(archive) in str(info.value)
    assert files_in(cache_dir) == set()


def test_truncated_archive_rejected(lfw_tgz, tmp_path):
    data = lfw_tgz.read_bytes()
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "lfw.hdf5"

    with pytest.raises(DataError, match="truncated") as info:
        build(truncated, out)
    assert str(truncated) in str(info.value)
    assert not out.parent.exists()


def test_archive_without_jpeg_rejected(tmp_path):
    archive = make_tgz(tmp_path / "empty.tgz", extra={"lfw-deepfunneled/README.txt": b"hi"})
    out = tmp_path / "out" / "lfw.hdf5"

    folder = tmp_path / "src" / "lfw-deepfunneled"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("no images here")

    with pytest.raises(DataError, match="contains no JPEG files") as info:
        build(archive, out)
    assert str(archive) in str(info.value)
    with pytest.raises(DataError, match="contains no JPEG files") as info:
        build(folder, out)
    assert str(folder) in str(info.value)
    assert not out.parent.exists()


def link_member(name, kind, target) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../escape.jpg", '".." path component'),
        ("lfw-deepfunneled/../../escape.jpg", '".." path component'),
        ("/tmp/escape.jpg", "absolute path"),
        (link_member("lfw-deepfunneled/X/X_0001.jpg", tarfile.SYMTYPE, "/etc/passwd"),
         "symbolic link"),
        (link_member("lfw-deepfunneled/X/X_0001.jpg", tarfile.LNKTYPE,
                     "lfw-deepfunneled/Ann_Lee/Ann_Lee_0001.jpg"), "hard link"),
        (link_member("lfw-deepfunneled/X/link", tarfile.SYMTYPE, "../../.."), "symbolic link"),
        (link_member("lfw-deepfunneled/X/fifo", tarfile.FIFOTYPE, ""), "device or FIFO"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "dir-symlink", "fifo"],
)
def test_unsafe_member_rejected(tmp_path, member, reason):
    folder = make_lfw_folder(tmp_path / "src")
    archive = tmp_path / "bad.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="lfw-deepfunneled")
        if isinstance(member, str):
            add_member(tar, member, jpeg_bytes(Image.new("RGB", (250, 250))))
        else:
            tar.addfile(member)
    name = member if isinstance(member, str) else member.name
    work = tmp_path / "work"
    work.mkdir()
    before = files_in(tmp_path)

    with pytest.raises(DataError, match=reason) as info:
        build(archive, work / "lfw.hdf5")
    assert repr(name) in str(info.value)
    assert files_in(tmp_path) == before


def write_with_bad_jpegs(tmp_path) -> Path:
    folder = make_lfw_folder(tmp_path / "src")
    good = (folder / "Ann_Lee" / "Ann_Lee_0001.jpg").read_bytes()
    (folder / "Ann_Lee" / "Ann_Lee_0100.jpg").write_bytes(good[: len(good) // 2])
    (folder / "Bob_Ray" / "Bob_Ray_0100.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return make_tgz(tmp_path / "bad.tgz", folder)


def test_bad_jpegs_over_max_bad_rejected(tmp_path):
    archive = write_with_bad_jpegs(tmp_path)
    out_dir = tmp_path / "out"

    with pytest.raises(DataError, match=r"2 of 14 JPEGs .* could not be decoded") as info:
        build(archive, out_dir / "lfw.hdf5")
    message = str(info.value)
    assert "Ann_Lee_0100.jpg" in message
    assert "Bob_Ray_0100.jpg" in message
    assert "--maxBad" in message
    assert not out_dir.exists()


def test_bad_jpegs_under_max_bad_skipped(tmp_path, caplog):
    archive = write_with_bad_jpegs(tmp_path)
    caplog.set_level(logging.INFO, logger="data_lfw")

    out = build(archive, tmp_path / "lfw.hdf5", max_bad_fraction=0.2)

    images, attrs = read_cache(out)
    assert images.shape[0] == 12
    assert attrs["count"] == 12
    assert attrs["skipped"] == 2
    assert "Decoded 12 of 14 JPEGs" in caplog.text
    assert "2 skipped." in caplog.text
    assert "Skipped lfw-deepfunneled/Ann_Lee/Ann_Lee_0100.jpg" in caplog.text


def test_unreadable_folder_file_skipped(tmp_path, caplog):
    folder = make_lfw_folder(tmp_path / "src")
    (folder / "Ann_Lee" / "Ann_Lee_0100.jpg").symlink_to(tmp_path / "missing.jpg")
    caplog.set_level(logging.INFO, logger="data_lfw")

    out = build(tmp_path / "src", tmp_path / "lfw.hdf5", max_bad_fraction=0.1)

    assert read_cache(out)[1]["skipped"] == 1
    assert "Ann_Lee_0100.jpg: could not be read" in caplog.text


def test_all_jpegs_skipped_rejected(lfw_tgz, tmp_path, monkeypatch):
    monkeypatch.setattr(data_lfw, "MAX_JPEG_BYTES", 1)
    out_dir = tmp_path / "out"

    with pytest.raises(DataError, match="None of the 12 JPEGs") as info:
        build(lfw_tgz, out_dir / "lfw.hdf5", max_bad_fraction=1.0)
    assert "more than the maximum of 1 for one JPEG" in str(info.value)
    assert not out_dir.exists()


def test_interrupted_write_leaves_no_file(lfw_tgz, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"

    def write_then_interrupt(path, images, attrs):
        Path(path).write_bytes(b"half a cache")
        raise KeyboardInterrupt

    monkeypatch.setattr(data_lfw, "_write_hdf5", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        build(lfw_tgz, out_dir / "lfw.hdf5")
    assert files_in(out_dir) == set()


def test_failed_write_raises_data_error(lfw_tgz, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"

    def write_then_fail(path, images, attrs):
        Path(path).write_bytes(b"half a cache")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_lfw, "_write_hdf5", write_then_fail)
    with pytest.raises(DataError, match="No space left on device"):
        build(lfw_tgz, out_dir / "lfw.hdf5")
    assert files_in(out_dir) == set()


# ---------------------------------------------------------------------------
# Bad caches: rebuilt at the default location, rejected when passed explicitly
# ---------------------------------------------------------------------------


def write_truncated(path, good):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_text(path, good):
    path.write_text("not an HDF5 file")


def write_without_dataset(path, good):
    with h5py.File(path, "w") as file:
        file.create_dataset("faces", data=np.zeros((2, 3, SCALE, SCALE), np.uint8))


def write_float_dtype(path, good):
    with h5py.File(path, "w") as file:
        file.create_dataset("lfw", data=np.zeros((2, 3, SCALE, SCALE), np.float32))


def write_channels_last(path, good):
    with h5py.File(path, "w") as file:
        file.create_dataset("lfw", data=np.zeros((2, SCALE, SCALE, 3), np.uint8))


def write_other_crop(path, good):
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("lfw", data=np.zeros((2, 3, SCALE, SCALE), np.uint8))
        dataset.attrs.update({"crop": 40, "scale": SCALE})


def write_other_scale(path, good):
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("lfw", data=np.zeros((2, 3, 8, 8), np.uint8))
        dataset.attrs.update({"crop": 50, "scale": 8})


BAD_CACHES = [
    (write_truncated, "not a readable HDF5 file, or it is truncated"),
    (write_text, "not a readable HDF5 file"),
    (write_without_dataset, 'has no "lfw" dataset'),
    (write_float_dtype, "has dtype float32"),
    (write_channels_last, r"has shape \(2, 16, 16, 3\)"),
    (write_other_crop, "was built with crop 40, not the requested 50"),
    (write_other_scale, "was built with scale 8, not the requested 16"),
]
BAD_CACHE_IDS = ["truncated", "text", "no-dataset", "float", "channels-last", "crop", "scale"]


@pytest.mark.parametrize(("write_bad", "reason"), BAD_CACHES, ids=BAD_CACHE_IDS)
def test_bad_explicit_cache_rejected(lfw_tgz, tmp_path, write_bad, reason):
    good = build(lfw_tgz, tmp_path / "good.hdf5")
    bad = tmp_path / "given.hdf5"
    write_bad(bad, good)
    content = bad.read_bytes()
    cache_dir = tmp_path / "data"

    with pytest.raises(DataError, match=reason) as info:
        data_lfw.prepare_data(bad, scale=SCALE, cache_dir=cache_dir)
    assert str(bad) in str(info.value)
    assert bad.read_bytes() == content
    assert not cache_dir.exists()


@pytest.mark.parametrize(("write_bad", "reason"), BAD_CACHES, ids=BAD_CACHE_IDS)
def test_bad_default_cache_rebuilt(lfw_tgz, tmp_path, caplog, write_bad, reason):
    good = build(lfw_tgz, tmp_path / "good.hdf5")
    cache_dir = tmp_path / "data"
    target = data_lfw.cache_path(SCALE, 50, cache_dir)
    cache_dir.mkdir()
    write_bad(target, good)
    caplog.set_level(logging.INFO, logger="data_lfw")

    path = data_lfw.prepare_data(lfw_tgz, scale=SCALE, cache_dir=cache_dir)

    assert path == target
    np.testing.assert_array_equal(data_lfw.load_uint8(path), read_cache(good)[0])
    assert "Rebuilding the cache" in caplog.text
    messages = [record.getMessage() for record in caplog.records]
    rebuild_messages = [message for message in messages if "Rebuilding" in message]
    assert len(rebuild_messages) == 1
    assert re.search(reason, rebuild_messages[0])
    assert files_in(cache_dir) == {target.name}


def test_valid_default_cache_reused(lfw_tgz, tmp_path, monkeypatch):
    cache_dir = tmp_path / "data"
    first = data_lfw.prepare_data(lfw_tgz, scale=SCALE, cache_dir=cache_dir)

    def fail_build(*args, **kwargs):
        raise AssertionError("a valid cache was rebuilt")

    monkeypatch.setattr(data_lfw, "build_cache", fail_build)
    assert data_lfw.prepare_data(lfw_tgz, scale=SCALE, cache_dir=cache_dir) == first
    assert data_lfw.prepare_data(first, scale=SCALE, cache_dir=cache_dir) == first


def test_cache_from_other_source_rebuilt(lfw_tgz, tmp_path, caplog):
    cache_dir = tmp_path / "data"
    other = make_tgz(tmp_path / "other.tgz", make_lfw_folder(tmp_path / "other", count=5))
    data_lfw.prepare_data(other, scale=SCALE, cache_dir=cache_dir)
    caplog.set_level(logging.INFO, logger="data_lfw")

    path = data_lfw.prepare_data(lfw_tgz, scale=SCALE, cache_dir=cache_dir)

    assert read_cache(path)[1]["count"] == 12
    assert f"was built from {other.resolve()}" in caplog.text


# ---------------------------------------------------------------------------
# Download (urlopen is always mocked)
# ---------------------------------------------------------------------------


class FakeResponse:
    """Stand-in for the urlopen response: serves data, then raises error if given."""

    def __init__(self, data: bytes, length: int | None = None, error=None):
        self.stream = io.BytesIO(data)
        self.error = error
        self.headers = {} if length is None else {"Content-Length": str(length)}

    def read(self, size=-1):
        chunk = self.stream.read(min(size, 1000))
        if not chunk and self.error is not None:
            raise self.error
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def mock_urlopen(monkeypatch, response=None, error=None) -> list:
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        if error is not None:
            raise error
        return response

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


def test_download_builds_cache(lfw_tgz, tmp_path, monkeypatch):
    data = lfw_tgz.read_bytes()
    calls = mock_urlopen(monkeypatch, FakeResponse(data, len(data)))
    monkeypatch.setattr(data_lfw, "DEFAULT_MD5", hashlib.md5(data).hexdigest())
    cache_dir = tmp_path / "data"

    path = data_lfw.prepare_data(None, scale=SCALE, cache_dir=cache_dir)

    assert calls == [data_lfw.DEFAULT_URL]
    assert path == data_lfw.cache_path(SCALE, 50, cache_dir)
    assert (cache_dir / "lfw-deepfunneled.tgz").read_bytes() == data
    assert read_cache(path)[1]["count"] == 12
    assert files_in(cache_dir) == {"lfw-deepfunneled.tgz", path.name}


def test_local_default_archive_not_downloaded(lfw_tgz, tmp_path):
    cache_dir = tmp_path / "data"
    cache_dir.mkdir()
    (cache_dir / "lfw-deepfunneled.tgz").write_bytes(lfw_tgz.read_bytes())

    path = data_lfw.prepare_data(None, scale=SCALE, cache_dir=cache_dir)

    assert read_cache(path)[1]["count"] == 12


def assert_download_failed(cache_dir: Path, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        data_lfw.prepare_data(None, scale=SCALE, cache_dir=cache_dir)
    assert "--data PATH" in str(info.value)
    assert data_lfw.DEFAULT_URL in str(info.value)
    assert files_in(cache_dir) == set()


def test_download_md5_mismatch_removed(lfw_tgz, tmp_path, monkeypatch):
    data = lfw_tgz.read_bytes()
    mock_urlopen(monkeypatch, FakeResponse(data, len(data)))

    assert_download_failed(tmp_path / "data", "has MD5 .* expected 68331da3")


def test_download_connection_error(tmp_path, monkeypatch):
    mock_urlopen(monkeypatch, error=urllib.error.URLError("Name or service not known"))

    assert_download_failed(tmp_path / "data", "failed .*Name or service not known")


def test_download_interrupted_mid_read(lfw_tgz, tmp_path, monkeypatch):
    data = lfw_tgz.read_bytes()
    response = FakeResponse(data[:5000], len(data), error=ConnectionResetError("reset by peer"))
    mock_urlopen(monkeypatch, response)

    assert_download_failed(tmp_path / "data", "failed .*reset by peer")


def test_download_short_body_rejected(lfw_tgz, tmp_path, monkeypatch):
    data = lfw_tgz.read_bytes()
    mock_urlopen(monkeypatch, FakeResponse(data[:5000], len(data)))

    assert_download_failed(tmp_path / "data", f"interrupted after 5000 of {len(data)} bytes")


def test_stale_part_file_not_used(lfw_tgz, tmp_path, monkeypatch):
    cache_dir = tmp_path / "data"
    cache_dir.mkdir()
    (cache_dir / "lfw-deepfunneled.tgz.part").write_bytes(lfw_tgz.read_bytes())
    mock_urlopen(monkeypatch, error=urllib.error.URLError("timed out"))

    assert_download_failed(cache_dir, "timed out")
    assert_download_failed(cache_dir, "timed out")


def test_download_ctrl_c_removes_part(lfw_tgz, tmp_path, monkeypatch):
    data = lfw_tgz.read_bytes()
    mock_urlopen(monkeypatch, FakeResponse(data[:5000], len(data), error=KeyboardInterrupt()))
    cache_dir = tmp_path / "data"

    with pytest.raises(KeyboardInterrupt):
        data_lfw.prepare_data(None, scale=SCALE, cache_dir=cache_dir)
    assert files_in(cache_dir) == set()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def test_cli_builds_cache(lfw_tgz, tmp_path, capsys):
    out = tmp_path / "cli.hdf5"

    code = data_lfw.main(["--data", str(lfw_tgz), "--scale", "8", "--out", str(out)])

    assert code == 0
    assert f"{out}: 12 images, shape (12, 3, 8, 8)" in capsys.readouterr().out
    assert read_cache(out)[0].shape == (12, 3, 8, 8)


def test_cli_rejects_bad_cache(tmp_path, capsys):
    bad = tmp_path / "given.hdf5"
    bad.write_text("not an HDF5 file")

    code = data_lfw.main(["--data", str(bad), "--scale", "8"])

    assert code == 2
    assert f"error: --data {bad} is not a readable HDF5 file" in capsys.readouterr().err


def test_cli_bad_input_exit_code(tmp_path):
    missing = tmp_path / "missing.tgz"

    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "data_lfw.py"), "--data", str(missing)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert f"--data {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert files_in(tmp_path) == set()


# ---------------------------------------------------------------------------
# Real LFW sample
# ---------------------------------------------------------------------------


def test_real_lfw_mini_archive(tmp_path):
    if not MINI_ARCHIVE.is_file():
        pytest.skip(f"{MINI_ARCHIVE} is not present")

    path = data_lfw.prepare_data(MINI_ARCHIVE, scale=32, cache_dir=tmp_path)

    images, attrs = read_cache(path)
    assert images.shape == (509, 3, 32, 32)
    assert attrs["count"] == 509
    assert attrs["skipped"] == 0
