"""Build and load the LFW deep-funneled face cache that the GAN trains on.

Reads the LFW deep-funneled archive (``lfw-deepfunneled.tgz``, members
``lfw-deepfunneled/<Person_Name>/<Person_Name>_0001.jpg``, 250x250 RGB JPEGs) or a folder
with the extracted JPEGs. Each image loses ``crop`` px on every side (250 -> 150 with the
default 50), is resized to ``scale`` x ``scale`` with Pillow's bicubic filter, and the
images are shuffled with ``numpy.random.RandomState(seed).permutation``. Writes one HDF5
file whose dataset "lfw" is uint8 with shape (N, 3, S, S), channels first. The dataset
has the attributes crop, scale, count, source (the resolved archive or folder path), seed
and the decode counts converted, resized and skipped.

Archive members are read into memory and never extracted to disk. Only regular files are
read. The whole archive is rejected with a DataError naming the member if any member is a
symbolic link, hard link, device or FIFO, or has an absolute name or a ".." component. A
folder source is the user's own file tree, so symbolic links to files in it are read, but
symbolic links to folders are not descended into.

As a script it builds the cache and prints its path, count and shape:
``python data_lfw.py [--data PATH] [--scale 64] [--crop 50] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import io
import logging
import multiprocessing
import numbers
import os
import secrets
import signal
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
DEFAULT_MD5 = "68331da3eb755a505a502b5aacb3c201"
ARCHIVE_NAME = "lfw-deepfunneled.tgz"
DATASET_NAME = "lfw"
HDF5_SUFFIXES = (".hdf5", ".h5")
JPEG_SUFFIXES = (".jpg", ".jpeg")

LFW_SIDE = 250  # width and height of the LFW deep-funneled JPEGs, in px
# LFW JPEGs are about 10 KB. Larger members are skipped unread, so a hostile archive
# cannot make the builder load a huge file into memory.
MAX_JPEG_BYTES = 64 * 2**20
DECODE_CHUNKSIZE = 32
DOWNLOAD_CHUNK_BYTES = 2**20
DOWNLOAD_TIMEOUT_S = 60
MAX_LISTED_BAD = 5  # skipped images named in logs and errors; the rest are only counted


class DataError(Exception):
    """Invalid or unusable LFW input. The message names the path or value and the fix."""


@dataclass
class DecodeReport:
    """Counts of the decode step of one cache build."""

    total: int = 0
    converted: Counter = field(default_factory=Counter)  # original mode -> count
    resized: int = 0  # images whose size was not 250x250
    skipped: list = field(default_factory=list)  # (name, reason) of undecodable images

    def summary(self) -> str:
        decoded = self.total - len(self.skipped)
        modes = ", ".join(f"{count} {mode}" for mode, count in sorted(self.converted.items()))
        converted = f"{sum(self.converted.values())} converted to RGB"
        if modes:
            converted += f" ({modes})"
        return (
            f"Decoded {decoded} of {self.total} JPEGs: {converted}, "
            f"{self.resized} not {LFW_SIDE}x{LFW_SIDE} (cropped proportionally), "
            f"{len(self.skipped)} skipped."
        )


def cache_path(scale: int = 64, crop: int = 50, cache_dir: str | Path = "data") -> Path:
    """Return the default cache file for a crop and scale, e.g. data/lfw_crop50_64.hdf5."""
    return Path(cache_dir) / f"lfw_crop{crop}_{scale}.hdf5"


def _check_params(scale, crop, seed=1, workers=1, max_bad_fraction=0.0) -> None:
    if not isinstance(scale, numbers.Integral) or scale < 1:
        raise DataError(f"scale must be a positive integer (px), got {scale!r}.")
    if not isinstance(crop, numbers.Integral) or not 0 <= crop < LFW_SIDE // 2:
        raise DataError(
            f"crop must be an integer from 0 to {LFW_SIDE // 2 - 1} px, got {crop!r}."
        )
    if not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise DataError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}.")
    if not isinstance(workers, numbers.Integral) or workers < 1:
        raise DataError(f"workers must be a positive integer, got {workers!r}.")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise DataError(f"maxBad must be a fraction from 0 to 1, got {max_bad_fraction!r}.")


# ---------------------------------------------------------------------------
# Reading the source: archive or folder
# ---------------------------------------------------------------------------


def _too_large(size: int) -> str:
    return f"has {size} bytes, more than the maximum of {MAX_JPEG_BYTES} for one JPEG"


def _is_jpeg_name(name: str) -> bool:
    return name.lower().endswith(JPEG_SUFFIXES)


def _member_rejection(member: tarfile.TarInfo) -> str | None:
    """Return why an archive member is unsafe to read, or None if it is safe."""
    path = PurePosixPath(member.name)
    if path.is_absolute():
        return "has an absolute path"
    if ".." in path.parts:
        return 'has a ".." path component that points outside the archive folder'
    if member.issym():
        return f"is a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"is a hard link to {member.linkname!r}"
    if not (member.isreg() or member.isdir()):
        return "is a device or FIFO, not a regular file"
    return None


def _archive_error(archive: Path, err: Exception) -> DataError:
    return DataError(
        f"{archive} is not a readable gzip-compressed tar archive (.tgz), or it is "
        f"truncated: {err}. Download it again or pass the extracted folder with --data."
    )


def _list_archive(archive: Path) -> list[tarfile.TarInfo]:
    """Return the JPEG members of a .tgz archive in archive order.

    Reads the whole archive once, so a truncated or corrupt archive fails here, before
    any decoding starts. Raises DataError naming the first unsafe member.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise _archive_error(archive, err) from err

    for member in members:
        reason = _member_rejection(member)
        if reason is not None:
            raise DataError(
                f"Rejected the archive {archive} because its member {member.name!r} "
                f"{reason}. Only regular files inside the archive folder are read. Use an "
                f"intact copy of the LFW archive."
            )
    return [m for m in members if m.isreg() and _is_jpeg_name(m.name)]


def _read_archive(
    archive: Path, members: list[tarfile.TarInfo], ranks: list[int], errors: list
) -> Iterator[tuple]:
    """Yield (rank, JPEG bytes, None) for each member, reading the archive front to back.

    A member larger than MAX_JPEG_BYTES yields (rank, None, skip reason) instead. A read
    error ends the iteration and is appended to ``errors``, because the generator runs
    in the pool's task thread where an exception would not reach the caller.
    """
    order = sorted(range(len(members)), key=lambda i: members[i].offset_data)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for i in order:
                member = members[i]
                if member.size > MAX_JPEG_BYTES:
                    yield ranks[i], None, _too_large(member.size)
                    continue
                with tar.extractfile(member) as file:
                    yield ranks[i], file.read(), None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        errors.append(_archive_error(archive, err))


def _list_folder(folder: Path) -> list[Path]:
    """Return the JPEG files under a folder at any depth, without following folder links."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files.extend(Path(root) / name for name in sorted(names) if _is_jpeg_name(name))
    return files


def _read_folder(files: list[Path], ranks: list[int]) -> Iterator[tuple]:
    """Yield (rank, JPEG bytes, None) for each file, or (rank, None, skip reason) for a
    file that is too large or cannot be read, such as a broken symbolic link."""
    for path, rank in zip(files, ranks):
        try:
            size = path.stat().st_size
            if size > MAX_JPEG_BYTES:
                yield rank, None, _too_large(size)
                continue
            data = path.read_bytes()
        except OSError as err:
            yield rank, None, f"could not be read ({err})"
            continue
        yield rank, data, None


def _sort_ranks(names: list[str]) -> list[int]:
    """Return the position of each name in sorted order, ties kept in source order."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    ranks = [0] * len(names)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def _open_source(source: Path, errors: list) -> tuple[list[str], Iterator]:
    """Return the sorted JPEG names of an archive or folder and an iterator over their
    (rank, bytes, skip reason), where rank is the index into the sorted names."""
    if not source.exists():
        raise DataError(
            f"{source} does not exist. Pass the LFW archive (.tgz) or its extracted folder."
        )
    if source.is_dir():
        files = _list_folder(source)
        names = [path.relative_to(source).as_posix() for path in files]
        ranks = _sort_ranks(names)
        items = _read_folder(files, ranks)
    else:
        members = _list_archive(source)
        names = [member.name for member in members]
        ranks = _sort_ranks(names)
        items = _read_archive(source, members, ranks, errors)
    if not names:
        raise DataError(
            f"{source} contains no JPEG files (*.jpg). Pass the LFW deep-funneled archive "
            f"{ARCHIVE_NAME} or a folder with its images."
        )
    return sorted(names), items


# ---------------------------------------------------------------------------
# Decoding (runs in the worker processes)
# ---------------------------------------------------------------------------


def _crop_and_resize(image: Image.Image, scale: int, crop: int):
    """Return (pixels (3, S, S) uint8, original mode if converted, original size if not
    250x250). Images of another size lose the same fraction crop/250 of each side."""
    converted_mode = None
    if image.mode != "RGB":
        converted_mode = image.mode
        image = image.convert("RGB")
    width, height = image.size
    left = width * crop // LFW_SIDE
    top = height * crop // LFW_SIDE
    image = image.crop((left, top, width - left, height - top))
    image = image.resize((scale, scale), Image.Resampling.BICUBIC)
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    other_size = None if (width, height) == (LFW_SIDE, LFW_SIDE) else (width, height)
    return pixels, converted_mode, other_size


def _decode_jpeg(item: tuple[int, bytes | None, str | None], scale: int, crop: int):
    """Decode, crop and resize one JPEG from (rank, bytes, skip reason).

    Returns (rank, pixels or None, converted mode, other size, skip reason).
    """
    rank, data, skip_reason = item
    if skip_reason is not None:
        return rank, None, None, None, skip_reason
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            image.load()
            return rank, *_crop_and_resize(image, scale, crop), None
    # Pillow raises OSError, SyntaxError, ValueError, struct.error and
    # DecompressionBombError, among others, for malformed files.
    except Exception as err:  # noqa: BLE001
        return rank, None, None, None, f"{type(err).__name__}: {err}"


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group. The parent handles it and terminates the
    # pool, so the workers ignore it instead of printing their own tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_all(
    names: list[str], items: Iterable, scale: int, crop: int, workers: int
) -> tuple[np.ndarray, DecodeReport]:
    """Decode all images into an array in sorted-name order, dropping undecodable ones."""
    count = len(names)
    images = np.zeros((count, 3, scale, scale), dtype=np.uint8)
    decoded = np.zeros(count, dtype=bool)
    report = DecodeReport(total=count)
    decode = functools.partial(_decode_jpeg, scale=scale, crop=crop)

    with multiprocessing.Pool(workers, initializer=_ignore_sigint) as pool, tqdm(
        total=count, desc="Decoding LFW JPEGs", unit="img"
    ) as bar:
        results = pool.imap_unordered(decode, items, chunksize=DECODE_CHUNKSIZE)
        for rank, pixels, converted_mode, other_size, reason in results:
            bar.update()
            if reason is not None:
                report.skipped.append((names[rank], reason))
                if len(report.skipped) <= MAX_LISTED_BAD:
                    log.warning("Skipped %s: %s", names[rank], reason)
                continue
            images[rank] = pixels
            decoded[rank] = True
            if converted_mode is not None:
                report.converted[converted_mode] += 1
            if other_size is not None:
                report.resized += 1

    report.skipped.sort()
    return images[decoded], report


def _check_bad_share(source: Path, report: DecodeReport, max_bad_fraction: float) -> None:
    skipped = len(report.skipped)
    share = skipped / report.total
    examples = "; ".join(f"{n} ({why})" for n, why in report.skipped[:MAX_LISTED_BAD])
    if skipped == report.total:
        raise DataError(
            f"None of the {report.total} JPEGs in {source} could be decoded, e.g. "
            f"{examples}. Use an intact copy of the LFW archive."
        )
    if share > max_bad_fraction:
        raise DataError(
            f"{skipped} of {report.total} JPEGs in {source} could not be decoded "
            f"({share:.1%}, more than maxBad {max_bad_fraction:.1%}), e.g. {examples}. "
            f"Use an intact copy of the archive, or raise --maxBad to skip them."
        )


# ---------------------------------------------------------------------------
# Writing and validating the HDF5 cache
# ---------------------------------------------------------------------------


def _write_hdf5(path: str | Path, images: np.ndarray, attrs: dict) -> None:
    with h5py.File(path, "w-") as file:
        dataset = file.create_dataset(DATASET_NAME, data=images)
        dataset.attrs.update(attrs)


def _write_cache(out_path: Path, images: np.ndarray, attrs: dict) -> None:
    """Write the cache to a temporary file next to out_path, then rename it, so that
    out_path is either the complete new cache or untouched."""
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"Could not create the cache folder {out_path.parent}: {err}. "
            f"Check its permissions or pass another --out path."
        ) from err

    # A unique name, so that concurrent builds do not write into each other's file.
    # h5py creates it with the usual umask permissions, unlike tempfile.mkstemp.
    unique = f"{os.getpid()}.{secrets.token_hex(4)}"
    temp_name = out_path.with_name(f".{out_path.name}.{unique}.tmp")
    try:
        _write_hdf5(temp_name, images, attrs)
        os.replace(temp_name, out_path)
    except BaseException as err:
        temp_name.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise DataError(
                f"Could not write the cache {out_path}: {err}. Check the free disk space "
                f"and the folder's permissions, or pass another --out path."
            ) from err
        raise


def _cache_problem(
    path: Path, scale: int | None = None, crop: int | None = None, source: Path | None = None
) -> str | None:
    """Return why path is not a usable cache, or None if it is.

    With scale, crop or source given, the cache must also have been built with them.
    """
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    try:
        with h5py.File(path, "r") as file:
            if DATASET_NAME not in file or not isinstance(file[DATASET_NAME], h5py.Dataset):
                return f'has no "{DATASET_NAME}" dataset'
            dataset = file[DATASET_NAME]
            return _dataset_problem(dataset, scale, crop, source)
    except (OSError, KeyError, ValueError) as err:
        return f"is not a readable HDF5 file, or it is truncated ({err})"


def _dataset_problem(dataset, scale, crop, source) -> str | None:
    shape = dataset.shape
    if dataset.dtype != np.uint8:
        return f'has dtype {dataset.dtype} in dataset "{DATASET_NAME}", expected uint8'
    if len(shape) != 4 or shape[0] < 1 or shape[1] != 3 or shape[2] != shape[3]:
        return f'has shape {shape} in dataset "{DATASET_NAME}", expected (N, 3, S, S)'
    if scale is not None and shape[2] != scale:
        return f"was built with scale {shape[2]}, not the requested {scale}"
    if crop is not None:
        built_crop = dataset.attrs.get("crop")
        if built_crop is None:
            return "has no crop attribute, so its crop is unknown"
        if int(built_crop) != crop:
            return f"was built with crop {int(built_crop)}, not the requested {crop}"
    if source is not None:
        built_source = dataset.attrs.get("source")
        if built_source != str(source.resolve()):
            return f"was built from {built_source}, not from {source.resolve()}"
    return None


def build_cache(
    source: str | Path,
    out_path: str | Path,
    scale: int = 64,
    crop: int = 50,
    seed: int = 1,
    workers: int = 2,
    max_bad_fraction: float = 0.01,
) -> Path:
    """Decode, crop, resize and shuffle the LFW JPEGs of source into the HDF5 file out_path.

    source is a .tgz archive or a folder with JPEGs at any depth. Members are decoded in
    ``workers`` processes. Images that are not RGB are converted, images that are not
    250x250 are cropped proportionally, and undecodable ones are skipped, which raises
    DataError when their share exceeds max_bad_fraction. Returns out_path.
    """
    _check_params(scale, crop, seed, workers, max_bad_fraction)
    source = Path(source)
    out_path = Path(out_path)

    read_errors: list[DataError] = []
    names, items = _open_source(source, read_errors)
    log.info("Building %s from %d JPEGs in %s", out_path, len(names), source)
    images, report = _decode_all(names, items, scale, crop, workers)
    if read_errors:
        raise read_errors[0]
    if report.converted or report.resized or report.skipped:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    _check_bad_share(source, report, max_bad_fraction)

    images = images[np.random.RandomState(seed).permutation(len(images))]
    attrs = {
        "crop": crop,
        "scale": scale,
        "count": len(images),
        "source": str(source.resolve()),
        "seed": seed,
        "converted": sum(report.converted.values()),
        "resized": report.resized,
        "skipped": len(report.skipped),
    }
    _write_cache(out_path, images, attrs)
    log.info("Wrote %d images of shape %s to %s", len(images), images.shape[1:], out_path)
    return out_path


# ---------------------------------------------------------------------------
# Download and resolving the --data option
# ---------------------------------------------------------------------------


def _manual_download_hint(url: str, dest: Path) -> str:
    return (
        f"Download {url} by hand and pass it with --data PATH (an archive, extracted "
        f"folder or HDF5 cache), or save it as {dest}."
    )


def download_archive(url: str, dest: str | Path, md5: str | None = DEFAULT_MD5) -> Path:
    """Download url to dest through a ``.part`` file, checking its MD5 if md5 is given.

    The ``.part`` file is removed on any failure, so only a complete, verified download
    ever appears at dest. Raises DataError on a failed or interrupted download.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length else None
            received = 0
            with open(part, "wb") as file, tqdm(
                total=expected, desc=f"Downloading {dest.name}", unit="B", unit_scale=True
            ) as bar:
                while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise DataError(
                f"Download of {url} was interrupted after {received} of {expected} bytes. "
                f"The partial file was removed. {_manual_download_hint(url, dest)}"
            )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        raise DataError(
            f"Download of {url} failed ({type(err).__name__}: {err}). The partial file was "
            f"removed. {_manual_download_hint(url, dest)}"
        ) from err
    except BaseException:
        part.unlink(missing_ok=True)
        raise

    if md5 is not None and digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"Downloaded {url} has MD5 {digest.hexdigest()}, expected {md5}. The file was "
            f"removed. {_manual_download_hint(url, dest)}"
        )
    os.replace(part, dest)
    return dest


def _is_hdf5_path(path: Path) -> bool:
    return path.suffix.lower() in HDF5_SUFFIXES


def _check_given_cache(path: Path, scale: int, crop: int) -> Path:
    problem = _cache_problem(path, scale, crop)
    if problem is not None:
        raise DataError(
            f"--data {path} {problem}. Pass a cache built with --scale {scale} --crop "
            f"{crop}, or pass the LFW archive or folder to build one."
        )
    return path


def prepare_data(
    data: str | Path | None = None,
    scale: int = 64,
    crop: int = 50,
    seed: int = 1,
    cache_dir: str | Path = "data",
    workers: int = 2,
    max_bad_fraction: float = 0.01,
) -> Path:
    """Resolve the --data option to the path of a valid HDF5 cache, building it if needed.

    data may be one of:
    - an HDF5 cache, returned as is if it matches scale and crop and rejected otherwise;
    - an archive or folder, built into cache_path(scale, crop, cache_dir) unless a valid
      cache from the same source is already there;
    - None, which means cache_dir/lfw-deepfunneled.tgz. That archive is downloaded from
      DEFAULT_URL and checked against DEFAULT_MD5 if it is missing.
    A cache at the default location that is invalid, or built from another source, is
    rebuilt, and the reason is logged.
    """
    _check_params(scale, crop, seed, workers, max_bad_fraction)
    target = cache_path(scale, crop, cache_dir)
    if data is None:
        source = Path(cache_dir) / ARCHIVE_NAME
    else:
        source = Path(data)
        if not source.exists():
            raise DataError(
                f"--data {source} does not exist. Pass an LFW archive (.tgz), its "
                f"extracted folder or an HDF5 cache, or omit --data to download LFW."
            )
        if _is_hdf5_path(source):
            return _check_given_cache(source, scale, crop)

    problem = _cache_problem(target, scale, crop, source)
    if problem is None:
        log.info("Using the cache %s", target)
        return target
    if target.exists():
        log.warning("Rebuilding the cache %s because it %s.", target, problem)

    if data is None and not source.exists():
        log.info("%s not found, downloading %s", source, DEFAULT_URL)
        download_archive(DEFAULT_URL, source, DEFAULT_MD5)
    return build_cache(source, target, scale, crop, seed, workers, max_bad_fraction)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_uint8(path: str | Path) -> np.ndarray:
    """Validate the cache at path and return its whole "lfw" dataset, (N, 3, S, S) uint8."""
    path = Path(path)
    problem = _cache_problem(path)
    if problem is not None:
        raise DataError(
            f"Cache {path} {problem}. Build it with: python data_lfw.py --out {path}"
        )
    try:
        with h5py.File(path, "r") as file:
            return file[DATASET_NAME][()]
    except (OSError, KeyError, ValueError) as err:
        raise DataError(
            f"Could not read the cache {path}: {err}. Rebuild it with: "
            f"python data_lfw.py --out {path}"
        ) from err


def to_float(x):
    """Map uint8 pixels to float32 in [-1, 1] as x / 127.5 - 1, so 0 -> -1 and 255 -> 1.

    A numpy array gives a numpy array, a torch tensor gives a tensor on the same device.
    """
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise TypeError(f"to_float expects uint8 pixels, got a numpy array of {x.dtype}.")
        return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

    # Imported here, so that importing this module (as spawned decode workers do) does not
    # load torch.
    import torch

    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8:
            raise TypeError(f"to_float expects uint8 pixels, got a torch tensor of {x.dtype}.")
        return x.to(torch.float32) / 127.5 - 1.0
    raise TypeError(f"to_float expects a numpy array or torch tensor, got {type(x).__name__}.")


def load_lfw(path: str | Path) -> np.ndarray:
    """Return the cache at path as float32 in [-1, 1], shape (N, 3, S, S)."""
    return to_float(load_uint8(path))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _parse_args(argv):
    parser = argparse.ArgumentParser(description="Build the LFW HDF5 cache for training.")
    parser.add_argument(
        "--data",
        help="LFW archive (.tgz), extracted folder or HDF5 cache. Default: "
        f"data/{ARCHIVE_NAME}, downloaded from {DEFAULT_URL} if missing.",
    )
    parser.add_argument("--scale", type=int, default=64, help="side of the output images, px")
    parser.add_argument(
        "--crop", type=int, default=50, help="px cut from each side of the 250x250 JPEGs"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the image shuffle")
    parser.add_argument(
        "--out",
        help="cache file to write, rebuilt even if it exists. Default: "
        "data/lfw_crop<crop>_<scale>.hdf5, reused if valid.",
    )
    parser.add_argument("--workers", type=int, default=2, help="decode processes")
    parser.add_argument(
        "--maxBad",
        type=float,
        default=0.01,
        help="maximum fraction of JPEGs that may be skipped as undecodable or unreadable "
        "before the build fails",
    )
    return parser.parse_args(argv)


def _build_to_out(args) -> Path:
    if args.data is None:
        source = Path("data") / ARCHIVE_NAME
        if not source.exists():
            download_archive(DEFAULT_URL, source, DEFAULT_MD5)
    else:
        source = Path(args.data)
        if _is_hdf5_path(source):
            raise DataError(
                f"--data {source} is already an HDF5 cache. --out needs an LFW archive or "
                f"folder to build from."
            )
    return build_cache(
        source, args.out, args.scale, args.crop, args.seed, args.workers, args.maxBad
    )


def main(argv=None) -> int:
    """Build the cache from the command line. Returns the exit code, 2 on a DataError."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        if args.out is None:
            path = prepare_data(
                args.data, args.scale, args.crop, args.seed, "data", args.workers, args.maxBad
            )
        else:
            path = _build_to_out(args)
        images_shape = _cache_shape(path)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted. No cache file was written.", file=sys.stderr)
        return 130
    print(f"{path}: {images_shape[0]} images, shape {images_shape}, dtype uint8")
    return 0


def _cache_shape(path: Path) -> tuple:
    problem = _cache_problem(path)
    if problem is not None:
        raise DataError(f"Cache {path} {problem}.")
    with h5py.File(path, "r") as file:
        return file[DATASET_NAME].shape


if __name__ == "__main__":
    sys.exit(main())
