"""Draw samples from a generator that `train_lfw.py` trained.

Reads G's weights and the training options from a checkpoint `adversarial.pt` and
writes any of:

- an N x N grid PNG of samples (`--grid`, `--out`), laid out like the training grids;
- an animated GIF that walks in a loop through random latent points with spherical
  interpolation (`--walk`), several walks side by side (`--walks`), and its frames as
  PNGs (`--framesDir`);
- an .npz with `--n` samples as uint8 (N, S, S, 3) RGB under the key "samples" (`--npz`),
  for evaluation by other tools.

With none of these options it writes a 10x10 grid next to the checkpoint. Each output
draws its latent points from its own generator seeded with `--seed`, so the same
command writes the same picture whatever other outputs it also requests.

    python sample_lfw.py logs512_lfw64/adversarial.pt --grid 10 --seed 3
    python sample_lfw.py logs512_lfw64/adversarial.pt --walk walk.gif --walks 4
    python sample_lfw.py logs512_lfw64/adversarial.pt --npz samples.npz --n 10000
"""

import argparse
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models
from train_lfw import TrainingError, save_grid, select_device

DEFAULT_GRID = 10
MIN_TILE_PIXELS = 128  # GIF tiles are upscaled to at least this side unless --zoom is given
PADDING = 2  # pixels between tiles, as in the training grids
# Below this sine of the angle between two latent vectors, slerp falls back to linear
# interpolation, because the great circle through them is ill-defined.
SLERP_MIN_SINE = 1e-6
# (option, minimum value) pairs that validate_options enforces.
MINIMUM_VALUES = (
    ("grid", 1), ("points", 2), ("frames", 1), ("n", 1), ("walks", 1),
    ("batchSize", 1), ("zoom", 1),
    ("duration", 10),  # GIF stores frame durations in units of 10 ms
)


class SamplingError(Exception):
    """A checkpoint, option or output path that sampling cannot use; the message names the fix."""


def build_parser():
    parser = argparse.ArgumentParser(
        description="Draw sample grids, latent-walk GIFs and sample arrays from a "
                    "torch-gan checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="adversarial.pt written by train_lfw.py")
    parser.add_argument("--seed", type=int, default=1, help="seed of the latent points")
    parser.add_argument("--gpu", type=int, default=0, help="CUDA device index; -1 for the CPU")
    parser.add_argument("--batchSize", type=int, default=256, help="images per forward pass of G")

    grid = parser.add_argument_group("grid")
    grid.add_argument("--grid", type=int, default=None,
                      help=f"write an N x N grid PNG (default {DEFAULT_GRID} when no other "
                           "output is requested or --out is given)")
    grid.add_argument("--out", default=None,
                      help="path of the grid PNG; default: samples_grid_seedS.png next to "
                           "the checkpoint")

    walk = parser.add_argument_group("latent walk")
    walk.add_argument("--walk", default=None, help="write a looping latent walk to this GIF")
    walk.add_argument("--points", type=int, default=8, help="latent points the loop visits")
    walk.add_argument("--frames", type=int, default=16, help="frames from one point to the next")
    walk.add_argument("--duration", type=int, default=60, help="milliseconds per frame")
    walk.add_argument("--walks", type=int, default=1, help="independent walks side by side")
    walk.add_argument("--framesDir", default=None, help="also write the frames as PNGs here")
    walk.add_argument("--zoom", type=int, default=None,
                      help="nearest-neighbour upscaling of each tile; default: the smallest "
                           f"factor that makes a tile at least {MIN_TILE_PIXELS} px wide")

    npz = parser.add_argument_group("sample array")
    npz.add_argument("--npz", default=None, help='write --n samples to this .npz as "samples"')
    npz.add_argument("--n", type=int, default=1000, help="number of samples in the .npz")

    check = parser.add_argument_group("checks (the architecture always comes from the checkpoint)")
    check.add_argument("--scale", type=int, default=None,
                       help="reject the checkpoint unless it was trained at this scale")
    check.add_argument("--noiseDim", type=int, default=None,
                       help="reject the checkpoint unless its noise has this dimension")
    return parser


def validate_options(opt):
    """Raise SamplingError for an option below its minimum, naming the minimum."""
    for name, minimum in MINIMUM_VALUES:
        value = getattr(opt, name)
        if value is not None and value < minimum:
            raise SamplingError(f"invalid --{name} {value}: use a value >= {minimum}")


# ---------------------------------------------------------------------------
# Latent interpolation


def slerp(z0, z1, t):
    """Interpolate from z0 (t=0) to z1 (t=1) along the last dimension.

    The direction moves along the great circle from z0 to z1 at constant angular speed
    and the norm changes linearly from |z0| to |z1|. For |z0| == |z1| this is the usual
    slerp, and every point of the path has that norm. Pairs whose directions are
    nearly parallel or opposite (sine of the angle below SLERP_MIN_SINE), or that
    contain a zero vector, are interpolated linearly. z0 and z1 are (..., D) tensors of
    one shape and t is a scalar. The result is computed in float64 and returned in z0's
    dtype.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"slerp needs z0 and z1 of one shape, got {tuple(z0.shape)} "
                         f"and {tuple(z1.shape)}")
    t = float(t)
    a, b = z0.double(), z1.double()
    norm_a = a.norm(dim=-1, keepdim=True)
    norm_b = b.norm(dim=-1, keepdim=True)
    unit_a = a / norm_a.clamp_min(1e-300)
    unit_b = b / norm_b.clamp_min(1e-300)
    # 2 atan2(|u-v|, |u+v|) is accurate for all angles, unlike acos of the dot product.
    omega = 2 * torch.atan2((unit_a - unit_b).norm(dim=-1, keepdim=True),
                            (unit_a + unit_b).norm(dim=-1, keepdim=True))
    sine = torch.sin(omega)
    use_linear = (sine < SLERP_MIN_SINE) | (norm_a == 0) | (norm_b == 0)
    sine = torch.where(use_linear, torch.ones_like(sine), sine)
    direction = (torch.sin((1 - t) * omega) * unit_a + torch.sin(t * omega) * unit_b) / sine
    spherical = direction * ((1 - t) * norm_a + t * norm_b)
    linear = (1 - t) * a + t * b
    return torch.where(use_linear, linear, spherical).to(z0.dtype)


def latent_walk(points, frames_per_segment):
    """Return the closed slerp loop through points, a tensor (K * frames_per_segment, ...).

    points is (K, ..., D) with K >= 2. Segment k goes from points[k] to points[(k+1) % K]
    at t = f / frames_per_segment for f = 0 .. frames_per_segment - 1. Frame
    k * frames_per_segment is points[k] (up to rounding), and the last segment ends one
    step before points[0], so the walk played in a loop returns smoothly to its start.
    """
    count = points.shape[0]
    if count < 2:
        raise ValueError(f"a latent walk needs at least 2 points, got {count}")
    if frames_per_segment < 1:
        raise ValueError(f"frames_per_segment must be >= 1, got {frames_per_segment}")
    frames = []
    for k in range(count):
        start, end = points[k], points[(k + 1) % count]
        for f in range(frames_per_segment):
            frames.append(slerp(start, end, f / frames_per_segment))
    return torch.stack(frames)


def draw_noise(seed, shape):
    """Return standard normal noise of `shape` from its own CPU generator seeded with seed.

    The noise is drawn on the CPU, so it does not depend on the device that runs G.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)


# ---------------------------------------------------------------------------
# Loading the generator


def read_checkpoint(path):
    """Load the checkpoint at path with `weights_only=True` and check its top-level keys."""
    path = Path(path)
    if not path.exists():
        raise SamplingError(f"checkpoint not found: {path}. Pass the adversarial.pt that "
                            "train_lfw.py wrote into its --save folder")
    if not path.is_file():
        raise SamplingError(f"checkpoint {path} is a folder, not a file. Pass the "
                            f"adversarial.pt inside it, e.g. {path / 'adversarial.pt'}")
    hint = (f"Pass an adversarial.pt written by train_lfw.py; if {path.name} is one that "
            f"got damaged, try {path.name}.old beside it")
    if not zipfile.is_zipfile(path):
        raise SamplingError(f"failed to load {path}: it is not a zip archive as torch.save "
                            f"writes, or it is truncated. {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for files it cannot parse
        raise SamplingError(f"failed to load {path}: {_load_failure_reason(e)}. {hint}") from e
    if not isinstance(ckpt, dict):
        raise SamplingError(f"invalid checkpoint {path}: it contains a "
                            f"{type(ckpt).__name__}, not the dict that train_lfw.py writes")
    missing = sorted({"G", "opt"} - set(ckpt))
    if missing:
        raise SamplingError(f"invalid checkpoint {path}: missing {missing}. Pass an "
                            "adversarial.pt written by train_lfw.py")
    return ckpt


def _load_failure_reason(error):
    """Return one line on why torch.load failed, without torch's multi-line advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        # The line that names the rejected object in a weights_only failure.
        if line.startswith("WeightsUnpickler error"):
            return line.split(" Please")[0].rstrip(".")
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _architecture(saved, path):
    """Return (noise_dim, scale, ngf) from a checkpoint's options."""
    if not isinstance(saved, dict):
        raise SamplingError(f"invalid checkpoint {path}: its opt is a "
                            f"{type(saved).__name__}, not a dict of options")
    values = []
    for name in ("noiseDim", "scale", "ngf"):
        value = saved.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SamplingError(f"invalid checkpoint {path}: its opt has {name}={value!r}, "
                                "expected a positive integer")
        values.append(value)
    return tuple(values)


def _check_weights(expected, state, path, description):
    """Raise SamplingError unless state has the keys, shapes and finite values of expected."""
    hint = f"so the file is damaged or was edited; use another checkpoint, e.g. {path}.old"
    if not isinstance(state, dict):
        raise SamplingError(f"invalid checkpoint {path}: G is a {type(state).__name__}, "
                            f"not a state dict, {hint}")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SamplingError(f"G's weights in {path} do not fit the generator of its opt "
                            f"({description}): missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}, {hint}")
    for name, reference in expected.items():
        value = state[name]
        if not torch.is_tensor(value):
            raise SamplingError(f"G's {name} in {path} is a {type(value).__name__}, not a "
                                f"tensor, {hint}")
        if value.shape != reference.shape:
            raise SamplingError(f"G's {name} in {path} has shape {tuple(value.shape)}, but "
                                f"the generator of its opt ({description}) needs "
                                f"{tuple(reference.shape)}, {hint}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise SamplingError(f"G's {name} in {path} contains NaN or infinite values, "
                                f"{hint}")


def load_generator(path, device, scale=None, noise_dim=None):
    """Build G from the checkpoint at path and return (G in eval mode on device, saved opt).

    The architecture comes from the checkpoint's opt. A scale or noise_dim given here
    must match it, and G's weights must fit it, or SamplingError is raised.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    saved = ckpt["opt"]
    saved_noise_dim, saved_scale, ngf = _architecture(saved, path)
    for option, given, trained in (("scale", scale, saved_scale),
                                   ("noiseDim", noise_dim, saved_noise_dim)):
        if given is not None and given != trained:
            raise SamplingError(f"--{option} {given} contradicts the checkpoint {path}, "
                                f"which was trained with --{option} {trained}. Drop the "
                                f"option or pass a checkpoint trained with --{option} {given}")
    try:
        generator = models.Generator(saved_noise_dim, saved_scale, ngf)
    except ValueError as e:
        raise SamplingError(f"invalid checkpoint {path}: {e}") from e
    description = f"scale {saved_scale}, noiseDim {saved_noise_dim}, ngf {ngf}"
    _check_weights(generator.state_dict(), ckpt["G"], path, description)
    generator.load_state_dict(ckpt["G"])
    return generator.to(device).eval(), saved


# ---------------------------------------------------------------------------
# Generating and drawing


def to_uint8(images):
    """Map images in [-1, 1] to uint8 [0, 255] with clamping and rounding, in the same layout."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


@torch.no_grad()
def generate_batches(generator, noise, device, batch_size):
    """Yield G's images for noise, batch_size rows at a time, as float CPU tensors."""
    for start in range(0, len(noise), batch_size):
        batch = noise[start : start + batch_size].to(device)
        yield generator(batch).float().cpu()


def generate(generator, noise, device, batch_size):
    """Return G's images for noise (N, D) as one float CPU tensor (N, 3, S, S)."""
    return torch.cat(list(generate_batches(generator, noise, device, batch_size)))


def walk_columns(walks):
    """Return the columns of tiles in a walk frame: one row up to 4 walks, else near-square."""
    return walks if walks <= 4 else math.ceil(math.sqrt(walks))


def tile_images(tiles, ncol, padding=PADDING, zoom=1):
    """Return uint8 tiles (N, 3, H, W) as one HWC RGB array in rows of ncol, black between.

    Each tile is upscaled by zoom with nearest neighbour; the padding is not.
    """
    tiles = tiles.repeat_interleave(zoom, dim=-2).repeat_interleave(zoom, dim=-1)
    n, channels, height, width = tiles.shape
    nrows = math.ceil(n / ncol)
    canvas = torch.zeros(channels, nrows * (height + padding) + padding,
                         ncol * (width + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        row, col = divmod(i, ncol)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        canvas[:, top : top + height, left : left + width] = tiles[i]
    return canvas.permute(1, 2, 0).numpy()


def _prepare_path(path):
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SamplingError(f"failed to create the folder {path.parent}: {e.strerror}. "
                            "Pass a path in a writable folder") from e
    return path


def _write_error(path, error):
    return SamplingError(f"failed to write {path}: {error}. Check that its folder is "
                         "writable and the disk has space")


def write_grid(generator, opt, device, size, path):
    """Write a size x size grid of samples from --seed to path."""
    noise = draw_noise(opt.seed, (size * size, generator.noise_dim))
    images = generate(generator, noise, device, opt.batchSize)
    path = _prepare_path(path)
    try:
        save_grid(images, path, nrow=size, padding=PADDING)
    except OSError as e:
        raise _write_error(path, e) from e
    print(f"<sample> wrote a {size}x{size} grid (seed {opt.seed}) to {path}")


def walk_frames(generator, opt, device, scale):
    """Return the frames of --walks latent walks side by side, as HWC uint8 arrays."""
    points = draw_noise(opt.seed, (opt.walks, opt.points, generator.noise_dim))
    latents = latent_walk(points.transpose(0, 1), opt.frames)  # (K*F, walks, D)
    images = generate(generator, latents.reshape(-1, generator.noise_dim), device,
                      opt.batchSize)
    tiles = to_uint8(images).view(len(latents), opt.walks, 3, scale, scale)
    zoom = opt.zoom or max(1, math.ceil(MIN_TILE_PIXELS / scale))
    ncol = walk_columns(opt.walks)
    return [tile_images(frame, ncol, PADDING, zoom) for frame in tiles]


def write_walk(generator, opt, device, scale):
    """Write the latent walk as a GIF (--walk) and as PNG frames (--framesDir)."""
    frames = [Image.fromarray(frame) for frame in walk_frames(generator, opt, device, scale)]
    if opt.framesDir:
        folder = Path(opt.framesDir)
        for i, frame in enumerate(frames):
            path = _prepare_path(folder / f"frame_{i:04d}.png")
            try:
                frame.save(path)
            except OSError as e:
                raise _write_error(path, e) from e
        print(f"<sample> wrote {len(frames)} frames to {folder}/frame_NNNN.png")
    if opt.walk:
        path = _prepare_path(opt.walk)
        # NOTE: Pillow (13.0) merges consecutive identical frames into one of summed duration,
        # so a generator that draws two neighbouring frames alike gives a shorter GIF.
        try:
            frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:],
                           duration=opt.duration, loop=0)
        except OSError as e:
            raise _write_error(path, e) from e
        print(f"<sample> wrote a latent walk of {len(frames)} frames ({opt.points} points x "
              f"{opt.frames} frames, {opt.walks} walk(s), {opt.duration} ms per frame, "
              f"seed {opt.seed}) to {path}")


def write_npz(generator, opt, device):
    """Write --n samples as uint8 (N, S, S, 3) RGB under the key "samples" to --npz."""
    noise = draw_noise(opt.seed, (opt.n, generator.noise_dim))
    batches = generate_batches(generator, noise, device, opt.batchSize)
    samples = np.concatenate([to_uint8(b).permute(0, 2, 3, 1).numpy() for b in batches])
    path = _prepare_path(opt.npz)
    try:
        # An open file keeps the name as given: np.savez would append .npz to a path.
        with open(path, "wb") as f:
            np.savez(f, samples=samples)
    except OSError as e:
        raise _write_error(path, e) from e
    print(f"<sample> wrote {len(samples)} samples {samples.shape} uint8 (seed {opt.seed}) "
          f"to {path}")


def sample(opt):
    """Load G from opt.checkpoint and write every output that opt requests."""
    validate_options(opt)
    try:
        device = select_device(opt.gpu)
    except TrainingError as e:
        raise SamplingError(str(e)) from e
    generator, saved = load_generator(opt.checkpoint, device, opt.scale, opt.noiseDim)
    scale = saved["scale"]
    print(f"<sample> loaded G from {opt.checkpoint}: scale {scale}, noiseDim "
          f"{saved['noiseDim']}, ngf {saved['ngf']}, on {device}")

    wants_walk = bool(opt.walk or opt.framesDir)
    grid = opt.grid
    if grid is None and (opt.out or not (wants_walk or opt.npz)):
        grid = DEFAULT_GRID
    if grid is not None:
        path = opt.out or Path(opt.checkpoint).parent / f"samples_grid_seed{opt.seed}.png"
        write_grid(generator, opt, device, grid, path)
    if wants_walk:
        write_walk(generator, opt, device, scale)
    if opt.npz:
        write_npz(generator, opt, device)


def main(argv=None):
    opt = build_parser().parse_args(argv)
    try:
        sample(opt)
    except SamplingError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
