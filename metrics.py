"""Judge generated face images without downloaded weights: SWD, face-detection rate, diversity.

Reads two image sets, the generated samples and real LFW crops, each either uint8
(N, 3, S, S) in [0, 255] or float in [-1, 1] (numpy arrays or torch tensors). Float
images are mapped to the uint8 scale as (x + 1) * 127.5. Writes nothing. The command
line reads the sets from files and prints one ``name=value`` line per metric.

Metrics
-------
``swd`` is the sliced Wasserstein distance of Karras et al., "Progressive Growing of
GANs for Improved Quality, Stability, and Variation" (ICLR 2018), Section 5 and
Appendix D. Each image becomes a Laplacian pyramid that blurs with the 5x5 binomial
kernel ([1, 4, 6, 4, 1] / 16 in each direction, reflected borders) and downsamples by 2.
Its levels go from S px down to 16 px: 64, 32 and 16 for 64 px images, 32 and 16 for
32 px images. The last level is the 16 px Gaussian image, the others are band-pass
differences. From every level, 128 random 7x7 patches per image give 147-value
descriptors. Each descriptor set is normalized per RGB channel by its own mean and
standard deviation over all its patches. The SWD of a level is the mean absolute
difference of the sorted projections of the two sets onto 4 x 128 random unit
directions. Values are reported x 1000 per level (``swd_64``, ...) and averaged
(``swd_avg``). Lower is better.

Because each set is normalized on its own, SWD ignores a per-channel affine colour
change of a whole set (a brightness shift or a positive contrast scale), except where
the change clips pixels at 0 or 255. For example, 64 px cache images 0-199 against
images 200-399 give swd_avg 21.2. Against images 200-399 brightened by +0.3 on the
[-1, 1] scale (clipped) they give 23.3, but against them blurred by one pyramid
down-and-up step 60.9. Both sets use the same random patch positions, so the SWD of a
set to itself is exactly 0 and swd(a, b) == swd(b, a).

SWD depends on the sample count: fewer images give a higher floor, so compare values
only at equal counts. Real against real, with two disjoint sets of 1000 images from
the 64 px LFW cache (crop 50, images 0-999 against 1000-1999), seed 0, this code gives
swd_64=6.09, swd_32=7.09, swd_16=15.32, swd_avg=9.50, measured with
``python metrics.py --real data/lfw_crop50_64.hdf5 --real-vs-real --n 1000``.
Seeds 1 and 2, and the pairs 2000-2999 / 3000-3999 and 4000-4999 / 5000-5999, give
swd_avg from 8.5 to 9.0. At 200 against 200 images the floor is about 21. With the
32 px cache (crop 50) the same command gives swd_32=6.41, swd_16=15.27, swd_avg=10.84.

``face_detection_rate`` is the share of images in which the LBP frontal-face cascade
that scikit-image bundles (``lbpcascade_frontalface_opencv.xml``) finds at least one
face. Each image is converted to grayscale and resized to 128 px with Pillow's bicubic
filter, then searched with scale factor 1.1, step ratio 1, windows from 64 to 128 px
and at least 3 overlapping raw detections. With scikit-image 0.26 it detects faces in
97.4 % of 1000 real 64 px crops and in 96.7 % of 1000 real 32 px crops. It also fires
on 13 % of 300 upside-down real 64 px crops, 1.1 % of 1000 smooth random images
(bicubic 8x8 noise) and 0 % of 1000 uniform noise images. It took 1-4 ms per image on a 2-core x86 CPU.
The mean of the real crops is detected as a face, which is why diversity is measured
too. scikit-image is optional: ``pip install scikit-image``.

``diversity`` is the mean RMS pixel distance (uint8 scale) between random pairs of
distinct images, computed on the 16 px Gaussian level of the pyramid so that pixel
noise and small shifts count little. Given real images as the reference, it is the
ratio of that distance to the one of the reference: about 1 for real images and 0 for
a generator that always draws the same image. It does not measure how many modes a
generator covers: a generator with a few distinct outputs can score near 1.

``evaluate`` returns all of them in one dict, and ``reference_values`` returns their
real-against-real values.

Command line::

    python metrics.py --real data/lfw_crop50_64.hdf5 --fake samples.npz [--n 1000]
    python metrics.py --real data/lfw_crop50_64.hdf5 --real-vs-real [--n 1000]

``--fake`` takes an .npz file with uint8 (N, H, W, 3) samples or an HDF5 cache.
"""

from __future__ import annotations

import argparse
import functools
import math
import numbers
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import data_lfw

MIN_LEVEL_SIDE = 16  # the SWD pyramid stops at the last level of at least this side, in px
PATCH_SIDE = 7
FLOAT_RANGE_TOLERANCE = 1e-3  # float images may exceed [-1, 1] by this much
DESCRIPTOR_CHUNK = 500  # images turned into pyramid descriptors at a time, to bound memory

FACE_SEARCH_SIDE = 128  # px; images are resized to this side before the cascade runs
FACE_SCALE_FACTOR = 1.1
FACE_STEP_RATIO = 1.0
FACE_MIN_WINDOW = 64  # px, at FACE_SEARCH_SIDE
FACE_MIN_NEIGHBORS = 3

NPZ_KEYS = ("images", "samples")  # keys tried in an .npz file that has several arrays

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_GAUSSIAN_KERNEL = torch.outer(_BINOMIAL, _BINOMIAL).expand(3, 1, 5, 5).contiguous()

_warned_missing_skimage = False


# ---------------------------------------------------------------------------
# Input conversion
# ---------------------------------------------------------------------------


def to_pixels(images) -> torch.Tensor:
    """Convert an image set to a float32 tensor (N, 3, S, S) on the uint8 scale [0, 255].

    Takes uint8 images in [0, 255] or float images in [-1, 1], as a numpy array or torch
    tensor. Raises ValueError for another shape or range, TypeError for another type.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a numpy array or torch tensor, got {type(images).__name__}."
        )
    images = images.detach().cpu()
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(
            f"images must have shape (N, 3, S, S), got {tuple(images.shape)}. Transpose "
            f"channels-last (N, S, S, 3) images with .transpose(0, 3, 1, 2)."
        )
    if images.shape[0] == 0:
        raise ValueError("images is empty (N = 0). Pass at least one image.")
    if images.dtype == torch.uint8:
        return images.to(torch.float32)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}.")

    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values. Check the generator output.")
    low, high = images.min().item(), images.max().item()
    if low < -1 - FLOAT_RANGE_TOLERANCE or high > 1 + FLOAT_RANGE_TOLERANCE:
        raise ValueError(
            f"float images must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}]. "
            f"Pass uint8 images for the [0, 255] scale, or clamp to [-1, 1]."
        )
    return (images.to(torch.float32).clamp(-1, 1) + 1) * 127.5


def _check_same_shape(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake sets must have the same shape, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}. Use the same image count (e.g. the first N of each) "
            f"and the same image size."
        )


# ---------------------------------------------------------------------------
# Laplacian pyramid
# ---------------------------------------------------------------------------


def pyramid_sides(side: int) -> list[int]:
    """Return the SWD pyramid level sides for images of the given side, e.g. 64 -> [64, 32, 16].

    Raises ValueError when side is under 16 px or cannot be halved down to the last level.
    """
    if side < MIN_LEVEL_SIDE:
        raise ValueError(f"images must be at least {MIN_LEVEL_SIDE} px, got {side} px.")
    sides = [side]
    while sides[-1] % 2 == 0 and sides[-1] // 2 >= MIN_LEVEL_SIDE:
        sides.append(sides[-1] // 2)
    if sides[-1] >= 2 * MIN_LEVEL_SIDE:
        raise ValueError(
            f"images of {side} px cannot be halved down to {MIN_LEVEL_SIDE}-31 px because "
            f"{sides[-1]} px is odd. Use a side such as 32, 48 or 64 px."
        )
    return sides


def _blur(images: torch.Tensor) -> torch.Tensor:
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, _GAUSSIAN_KERNEL, groups=3)


def pyr_down(images: torch.Tensor) -> torch.Tensor:
    """Blur with the 5x5 binomial kernel and keep every second row and column."""
    return _blur(images)[:, :, ::2, ::2]


def pyr_up(images: torch.Tensor) -> torch.Tensor:
    """Double the side by inserting zero rows and columns, then blur with 4x the kernel."""
    n, channels, height, width = images.shape
    upsampled = images.new_zeros(n, channels, 2 * height, 2 * width)
    upsampled[:, :, ::2, ::2] = images
    return 4.0 * _blur(upsampled)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Return the band-pass levels, finest first, then the coarsest Gaussian level."""
    pyramid = [images]
    for _ in range(levels - 1):
        coarser = pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - pyr_up(coarser)
        pyramid.append(coarser)
    return pyramid


def gaussian_level(images: torch.Tensor) -> torch.Tensor:
    """Return the coarsest Gaussian level of the SWD pyramid (16 px for 32 or 64 px)."""
    levels = len(pyramid_sides(images.shape[-1]))
    for _ in range(levels - 1):
        images = pyr_down(images)
    return images


# ---------------------------------------------------------------------------
# Sliced Wasserstein distance
# ---------------------------------------------------------------------------


def _patch_centers(count, n_patches, sides, generator) -> list[tuple[torch.Tensor, ...]]:
    """Draw, per level, the image index and the patch-centre row and column of each patch."""
    half = PATCH_SIDE // 2
    image_index = torch.arange(count).repeat_interleave(n_patches)
    centers = []
    for side in sides:
        rows = torch.randint(half, side - half, (count * n_patches,), generator=generator)
        cols = torch.randint(half, side - half, (count * n_patches,), generator=generator)
        centers.append((image_index, rows, cols))
    return centers


def _extract_patches(level, image_index, rows, cols) -> torch.Tensor:
    """Return the 7x7 patches around (rows, cols) of level[image_index], (P, 3, 7, 7)."""
    offsets = torch.arange(PATCH_SIDE) - PATCH_SIDE // 2
    patch_rows = (rows[:, None] + offsets)[:, :, None]  # (P, 7, 1)
    patch_cols = (cols[:, None] + offsets)[:, None, :]  # (P, 1, 7)
    # Advanced indices around the channel slice put the patch axes first: (P, 7, 7, 3).
    patches = level[image_index[:, None, None], :, patch_rows, patch_cols]
    return patches.permute(0, 3, 1, 2)


def _descriptors(pixels: torch.Tensor, centers, sides) -> list[torch.Tensor]:
    """Return the normalized patch descriptors of every pyramid level, each (P, 147)."""
    per_level = [[] for _ in sides]
    for start in range(0, pixels.shape[0], DESCRIPTOR_CHUNK):
        chunk = pixels[start : start + DESCRIPTOR_CHUNK]
        for index, level in enumerate(laplacian_pyramid(chunk, len(sides))):
            image_index, rows, cols = centers[index]
            in_chunk = (image_index >= start) & (image_index < start + chunk.shape[0])
            patches = _extract_patches(
                level, image_index[in_chunk] - start, rows[in_chunk], cols[in_chunk]
            )
            per_level[index].append(patches)

    descriptors = []
    for patches in per_level:
        patches = torch.cat(patches)
        mean = patches.mean(dim=(0, 2, 3), keepdim=True)
        std = patches.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        # A constant set (std 0) would divide by zero. Its centred patches are all 0.
        patches = (patches - mean) / std.clamp_min(1e-8)
        descriptors.append(patches.reshape(patches.shape[0], -1))
    return descriptors


def _sliced_distance(a, b, n_repeats, n_dirs, generator) -> float:
    """Return the mean over repeats and directions of the 1-D Wasserstein-1 distances."""
    totals = []
    for _ in range(n_repeats):
        directions = torch.randn(a.shape[1], n_dirs, generator=generator)
        directions /= directions.norm(dim=0, keepdim=True)
        # numpy sorted contiguous rows 16x faster than torch 2.13 sorted columns (2-core CPU).
        projected_a = np.sort((directions.T @ a.T).numpy(), axis=1)
        projected_b = np.sort((directions.T @ b.T).numpy(), axis=1)
        totals.append(float(np.abs(projected_a - projected_b).mean()))
    return sum(totals) / len(totals)


def swd(real, fake, n_patches=128, n_repeats=4, n_dirs=128, seed=0) -> dict:
    """Compute the sliced Wasserstein distance x 1000 between two image sets per pyramid level.

    Returns {"swd_<side>": value, ..., "swd_avg": mean over levels}. Both sets must have the
    same shape (count and size), else ValueError. The same seed gives the same result.
    Memory use peaks at about 0.5 MB per image pair for 64 px images (the float32
    descriptors of both sets at all levels).
    """
    real = to_pixels(real)
    fake = to_pixels(fake)
    _check_same_shape(real, fake)
    for name, value in (("n_patches", n_patches), ("n_repeats", n_repeats), ("n_dirs", n_dirs)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    sides = pyramid_sides(real.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    centers = _patch_centers(real.shape[0], n_patches, sides, generator)
    with torch.no_grad():
        real_descriptors = _descriptors(real, centers, sides)
        fake_descriptors = _descriptors(fake, centers, sides)
        result = {}
        for side, a, b in zip(sides, real_descriptors, fake_descriptors):
            distance = _sliced_distance(a, b, n_repeats, n_dirs, generator)
            result[f"swd_{side}"] = 1000.0 * distance
    result["swd_avg"] = sum(result.values()) / len(sides)
    return result


# ---------------------------------------------------------------------------
# Face-detection rate
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _face_cascade():
    try:
        from skimage import data
        from skimage.feature import Cascade
    except ImportError as err:
        raise ImportError(
            "face_detection_rate needs scikit-image. Install it with: "
            "pip install scikit-image"
        ) from err
    return Cascade(data.lbp_frontal_face_cascade_filename())


def face_detection_rate(
    images,
    search_side=FACE_SEARCH_SIDE,
    scale_factor=FACE_SCALE_FACTOR,
    step_ratio=FACE_STEP_RATIO,
    min_window=FACE_MIN_WINDOW,
    min_neighbors=FACE_MIN_NEIGHBORS,
) -> float:
    """Return the share of images in which the LBP frontal-face cascade finds a face.

    Each image is converted to grayscale and resized to search_side px (bicubic), then
    searched with windows from min_window to search_side px. The defaults are tuned for
    32 and 64 px face crops (see the module docstring). Raises ImportError when
    scikit-image is missing.
    """
    from PIL import Image

    cascade = _face_cascade()
    pixels = to_pixels(images).round().clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    found = 0
    for image in pixels:
        gray = Image.fromarray(image).convert("L")
        if gray.size != (search_side, search_side):
            gray = gray.resize((search_side, search_side), Image.Resampling.BICUBIC)
        detections = cascade.detect_multi_scale(
            np.asarray(gray, dtype=np.float32) / 255.0,
            scale_factor=scale_factor,
            step_ratio=step_ratio,
            min_size=(min_window, min_window),
            max_size=(search_side, search_side),
            min_neighbor_number=min_neighbors,
        )
        found += len(detections) > 0
    return found / len(pixels)


def _face_rate_or_nan(images) -> float:
    """Return face_detection_rate, or NaN with a one-time warning without scikit-image."""
    global _warned_missing_skimage
    try:
        return face_detection_rate(images)
    except ImportError as err:
        if not _warned_missing_skimage:
            warnings.warn(f"face_rate is NaN: {err}", RuntimeWarning, stacklevel=3)
            _warned_missing_skimage = True
        return math.nan


# ---------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------


def _mean_pair_distance(pixels: torch.Tensor, n_pairs: int, seed: int) -> float:
    """Return the mean RMS distance between random pairs of distinct images' 16 px levels."""
    count = pixels.shape[0]
    if count < 2:
        raise ValueError(f"diversity needs at least 2 images, got {count}.")
    with torch.no_grad():
        features = gaussian_level(pixels).flatten(1)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(count, (n_pairs,), generator=generator)
    # An offset from 1 to count - 1 makes the second image differ from the first.
    second = (first + torch.randint(1, count, (n_pairs,), generator=generator)) % count
    squared = (features[first] - features[second]).pow(2).mean(dim=1)
    return squared.sqrt().mean().item()


def diversity(images, reference=None, n_pairs=10000, seed=0) -> float:
    """Measure the spread of an image set as its mean pairwise distance at 16 px.

    Returns the mean RMS distance (uint8 scale) between n_pairs random pairs of distinct
    images when reference is None. With reference real images of the same size, or their
    precomputed distance as a float, returns the ratio to the reference distance:
    about 1 for real images, 0 when all images are equal.
    """
    if not isinstance(n_pairs, numbers.Integral) or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive integer, got {n_pairs!r}.")
    pixels = to_pixels(images)
    distance = _mean_pair_distance(pixels, n_pairs, seed)
    if reference is None:
        return distance

    if isinstance(reference, numbers.Real):
        reference_distance = float(reference)
    else:
        reference_pixels = to_pixels(reference)
        if reference_pixels.shape[1:] != pixels.shape[1:]:
            raise ValueError(
                f"images and reference must have the same image size, got "
                f"{tuple(pixels.shape[1:])} and {tuple(reference_pixels.shape[1:])}."
            )
        reference_distance = _mean_pair_distance(reference_pixels, n_pairs, seed)
    if not reference_distance > 0:
        raise ValueError(
            f"reference distance must be positive, got {reference_distance}. Pass a "
            f"reference set of distinct real images."
        )
    return distance / reference_distance


# ---------------------------------------------------------------------------
# All metrics
# ---------------------------------------------------------------------------


def evaluate(fake, real, seed=0) -> dict:
    """Compute every metric of fake samples against real images of the same count and size.

    Returns a flat dict of floats: the swd_* keys of ``swd``, face_rate (share of fake
    images with a detected face, NaN with a warning when scikit-image is missing) and
    diversity (of fake relative to real).
    """
    result = swd(real, fake, seed=seed)
    result["face_rate"] = _face_rate_or_nan(fake)
    result["diversity"] = diversity(fake, reference=real, seed=seed)
    return result


def reference_values(real_a, real_b, seed=0) -> dict:
    """Return the metrics of real_b judged against real_a, the values of a perfect generator.

    real_a and real_b should be disjoint sets of real images of the same count and size.
    """
    return evaluate(real_b, real_a, seed=seed)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _channels_first(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[-1] == 3:
        return array.transpose(0, 3, 1, 2)
    if array.ndim == 4 and array.shape[1] == 3:
        return array
    raise ValueError(
        f"{path} contains an array of shape {array.shape}, expected (N, H, W, 3) or "
        f"(N, 3, H, W) images."
    )


def load_images(path: str | Path) -> np.ndarray:
    """Load images from an .npz file or an HDF5 cache as (N, 3, S, S), uint8 or float.

    An .npz file must contain one array, or an array named "images" or "samples".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {path} not found. Pass an .npz or .hdf5 file.")
    if path.suffix.lower() in data_lfw.HDF5_SUFFIXES:
        return data_lfw.load_uint8(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path} is neither an .npz nor an .hdf5/.h5 file.")

    with np.load(path) as archive:
        keys = list(archive.keys())
        if len(keys) == 1:
            key = keys[0]
        else:
            matches = [key for key in NPZ_KEYS if key in keys]
            if not matches:
                raise ValueError(
                    f"{path} contains the arrays {keys}. Expected a single array or one "
                    f"named {' or '.join(NPZ_KEYS)}."
                )
            key = matches[0]
        return _channels_first(archive[key], path)


def _first(images: np.ndarray, count: int, name: str, path: Path) -> np.ndarray:
    if len(images) < count:
        raise ValueError(
            f"{name} {path} contains {len(images)} images, fewer than the {count} "
            f"requested. Pass a smaller --n."
        )
    return images[:count]


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Print sample-quality metrics (SWD, face-detection rate, diversity) "
        "of generated images against real LFW crops, one name=value per line."
    )
    parser.add_argument("--real", required=True, help="HDF5 cache or .npz of real images")
    parser.add_argument("--fake", help="samples: .npz with uint8 (N, H, W, 3), or HDF5")
    parser.add_argument(
        "--real-vs-real",
        action="store_true",
        help="print the reference values of two disjoint halves of --real instead",
    )
    parser.add_argument(
        "--n", type=int, default=1000, help="images per set; the first N of each file"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of patches and pairs")
    args = parser.parse_args(argv)
    if (args.fake is None) == (not args.real_vs_real):
        parser.error("pass exactly one of --fake PATH and --real-vs-real.")
    if args.n < 2:
        parser.error(f"--n must be at least 2, got {args.n}.")
    return args


def main(argv=None) -> int:
    """Print the metrics from the command line. Returns the exit code, 2 on invalid input."""
    args = _parse_args(argv)
    real_path = Path(args.real)
    try:
        real = load_images(real_path)
        if args.real_vs_real:
            real = _first(real, 2 * args.n, "--real", real_path)
            result = reference_values(real[: args.n], real[args.n :], seed=args.seed)
        else:
            fake_path = Path(args.fake)
            fake = _first(load_images(fake_path), args.n, "--fake", fake_path)
            real = _first(real, args.n, "--real", real_path)
            result = evaluate(fake, real, seed=args.seed)
    except (ValueError, TypeError, FileNotFoundError, data_lfw.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, value in result.items():
        print(f"{name}={value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
