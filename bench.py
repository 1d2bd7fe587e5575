"""Benchmark the training step of train_lfw.py against a straightforward PyTorch baseline.

    python bench.py --gpu -1 --scale 64 --ngf 48 --ndf 16 --batchSize 64 \
        --precision bf16 --channelsLast --steps 5 --warmup 2

Every option that train_lfw.py accepts sets the configuration, except those that
bench.py sets itself (see CONTROLLED_OPTIONS). Three measurements run in one process:

- The project step: `train_lfw.main` trains one epoch of `warmup + steps` batches on a
  synthetic uint8 HDF5 cache of random images, with `--balance none`, so that every step
  updates both networks. The step time is the median of the per-batch differences of the
  cumulative `time_s` column of log.csv after the warm-up batches. That column counts
  only the training step: batch conversion, D step(s), G step and the finiteness checks.
- The baseline step: the same networks and the same D-step + G-step structure written the
  straightforward way (see `Baseline`), timed in the same way.
- A matmul peak on the same device, at the precision of the run.

The model FLOPs of a step are counted with `torch.utils.flop_counter.FlopCounterMode` on
the meta device (see `count_step_flops`). Nothing is written outside a temporary folder,
which is deleted at the end. The report goes to stdout and its last line is
`images_per_s=... fraction_of_peak=... speedup_vs_baseline=...`.
"""

import argparse
import contextlib
import csv
import io
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

import models
import train_lfw

# train_lfw.py options that bench.py sets itself, because the timing depends on them.
CONTROLLED_OPTIONS = (
    "data", "save", "epochs", "epochSize", "nval", "balance", "network", "evalEvery",
    "saveFreq",
)
SYNTHETIC_NVAL = 8  # held-out images of the synthetic cache, tested by D at the epoch end
CPU_PEAK_SIZE = 2048
CUDA_PEAK_SIZE = 4096
# Matmuls per timed repetition: one CPU matmul of 2048 takes tens of milliseconds, but a
# CUDA one takes well under a millisecond, too short to time alone.
# NOTE: the CUDA code paths (synchronization, peak, TF32) have only run on machines
# without CUDA so far, where --gpu falls back to the CPU.
CPU_PEAK_CALLS = 1
CUDA_PEAK_CALLS = 50


class BenchError(Exception):
    """A benchmark that cannot run; the message states the cause and the fix."""


# ---------------------------------------------------------------------------
# Synthetic data


def synthetic_images(count, scale, seed=1):
    """Return `count` random uint8 images, (count, 3, scale, scale)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 3, scale, scale), dtype=np.uint8)


def write_hdf5_cache(path, images):
    """Write uint8 (N, 3, S, S) images as an HDF5 cache in the layout data_lfw.py reads."""
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("lfw", data=images)
        dataset.attrs.update(
            crop=50, scale=images.shape[2], count=len(images), source="synthetic", seed=1
        )
    return Path(path)


def write_png_folder(folder, images):
    """Write uint8 (N, 3, S, S) images as one PNG file each; return the sorted paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:06d}.png"
        Image.fromarray(image.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------
# Project step


def read_step_times(log_csv, warmup):
    """Return the step times in seconds after `warmup` steps, from train_lfw's log.csv.

    The `time_s` column is cumulative, so the steps are the differences of consecutive
    rows, the first one counted from 0.
    NOTE: train_lfw.py writes `time_s` with 3 decimals, so steps shorter than about
    50 ms (tiny configurations, fast GPUs) carry a rounding error of several percent.
    """
    with open(log_csv, newline="") as f:
        cumulative = [float(row["time_s"]) for row in csv.DictReader(f)]
    if len(cumulative) <= warmup:
        raise BenchError(
            f"{log_csv} has {len(cumulative)} batches, but {warmup} warm-up batches need "
            "at least one more to time; check that train_lfw.py finished its epoch"
        )
    steps = np.diff([0.0] + cumulative)
    return [float(s) for s in steps[warmup:]]


def project_argv(train_argv, cache, save_dir, batch_size, batches):
    """Return train_lfw.py's arguments for one epoch of `batches` batches on `cache`."""
    epoch_size = batches * (batch_size // 2)
    return list(train_argv) + [
        "--data", str(cache), "-s", str(save_dir), "--epochs", "1",
        "--epochSize", str(epoch_size), "--nval", str(SYNTHETIC_NVAL), "--balance", "none",
    ]


def time_project_step(train_argv, opt, workdir, warmup, steps):
    """Run train_lfw.main on a synthetic cache in `workdir`; return the timed step seconds.

    train_lfw's console output is captured and shown only when it fails.
    """
    batches = warmup + steps
    count = batches * (opt.batchSize // 2) + SYNTHETIC_NVAL
    cache = write_hdf5_cache(Path(workdir) / "synthetic.hdf5", synthetic_images(count, opt.scale))
    save_dir = Path(workdir) / "project_run"
    argv = project_argv(train_argv, cache, save_dir, opt.batchSize, batches)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = train_lfw.main(argv)
    if code != 0:
        tail = output.getvalue()[-2000:]
        raise BenchError(f"train_lfw.main({argv}) returned {code}; its output ended with:\n{tail}")
    return read_step_times(save_dir / "log.csv", warmup)


# ---------------------------------------------------------------------------
# Baseline step


class ImageFolderDataset(Dataset):
    """Image files decoded with PIL into float32 (3, S, S) tensors in [-1, 1]."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            pixels = np.array(image.convert("RGB"))  # (S, S, 3) uint8
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0


def build_baseline_models(noise_dim, scale, ngf, ndf, bn_d=False):
    """Return the baseline's (G, D): models.py's networks with plain nearest upsampling.

    G runs `nn.Upsample` + `nn.Conv2d` as an `nn.Sequential`, so with the same weights
    it computes the same function as the project's phase-split G.
    """
    model_g = models.build_generator(noise_dim, scale, ngf, phase_upsample=False)
    model_d = models.build_discriminator(scale, ndf, bn_d)
    return model_g, model_d


def build_baseline_optimizer(name, params, opt, weight_decay=0.0):
    """Return the torch.optim counterpart of train_lfw's `--optimizer`.

    Warm-up of the learning rate is left out: it does not change the work of a step.
    """
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=opt.learningRate, alpha=0.9, eps=1e-8, weight_decay=weight_decay
        )
    if name == "adam":
        return torch.optim.Adam(
            params, lr=opt.learningRate, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay
        )
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=opt.learningRate, momentum=opt.momentum, weight_decay=weight_decay
        )
    raise BenchError(f"invalid --optimizer {name}: use one of rmsprop, adam, sgd")


class Baseline:
    """The training step written the straightforward way, for comparison.

    Image files on disk are decoded with PIL by a DataLoader (num_workers=0, so decoding
    is part of the step time). The networks run in float32 with the default memory
    format and torch.optim optimizers. Each step makes K D updates on half a batch of
    real and half a batch of generated images, then one G update on a full batch of
    noise. As in the Lua, whose `model_D:backward` also accumulated D's weight gradients,
    the G update computes D's weight gradients too, which the next D update zeroes.
    NOTE: --coefL1 is not applied. --coefL2 becomes D's weight_decay, which adds the same
    gradient term.
    """

    def __init__(self, opt, device, image_paths):
        self.opt = opt
        self.device = device
        self.half = opt.batchSize // 2
        torch.manual_seed(opt.seed)
        model_g, model_d = build_baseline_models(
            opt.noiseDim, opt.scale, opt.ngf, opt.ndf, opt.bnD
        )
        self.model_g = model_g.to(device).train()
        self.model_d = model_d.to(device).train()
        self.optimizer_g = build_baseline_optimizer(
            opt.optimizer, self.model_g.parameters(), opt
        )
        self.optimizer_d = build_baseline_optimizer(
            opt.optimizer, self.model_d.parameters(), opt, weight_decay=opt.coefL2
        )
        loader_generator = torch.Generator().manual_seed(opt.seed)
        self.loader = DataLoader(
            ImageFolderDataset(image_paths), batch_size=self.half, shuffle=True,
            drop_last=True, num_workers=0, generator=loader_generator,
        )
        self.targets = torch.cat([torch.ones(self.half, 1), torch.zeros(self.half, 1)]).to(device)
        self.ones = torch.ones(opt.batchSize, 1, device=device)

    def step(self, real):
        """Train on one batch of real images; return (D loss, G loss) as floats."""
        real = real.to(self.device)
        for _ in range(self.opt.K):
            noise = torch.randn(self.opt.batchSize, self.opt.noiseDim, device=self.device)
            with torch.no_grad():
                fake = self.model_g(noise[self.half :])
            outputs = self.model_d(torch.cat([real, fake]))
            loss_d = F.binary_cross_entropy(outputs, self.targets)
            self.optimizer_d.zero_grad()
            loss_d.backward()
            self.optimizer_d.step()

        noise = torch.randn(self.opt.batchSize, self.opt.noiseDim, device=self.device)
        outputs = self.model_d(self.model_g(noise))
        loss_g = F.binary_cross_entropy(outputs, self.ones)
        self.optimizer_g.zero_grad()
        loss_g.backward()
        self.optimizer_g.step()
        return loss_d.item(), loss_g.item()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_baseline_step(opt, device, workdir, warmup, steps):
    """Write `warmup + steps` batches of PNG files to `workdir`, train the baseline on
    them and return the step seconds after the warm-up, data loading included."""
    half = opt.batchSize // 2
    images = synthetic_images((warmup + steps) * half, opt.scale)
    paths = write_png_folder(Path(workdir) / "baseline_images", images)
    baseline = Baseline(opt, device, paths)
    batches = iter(baseline.loader)
    times = []
    for _ in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        baseline.step(next(batches))
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


# ---------------------------------------------------------------------------
# FLOPs and peak


def count_step_flops(
    noise_dim, scale, ngf, ndf, batch_size, phase_upsample=True, bn_d=False, k=1
):
    """Count the model FLOPs of one training step of train_lfw.py, per aten operator.

    The step is the one train_lfw.py runs. Each of the K D updates runs G forward
    without gradients on half a batch of noise, then D forward and backward on half
    real, half generated images. The G update runs G and a frozen D forward and
    backward on a full batch of noise. Returns
    {operator name: FLOPs}, counting 2 FLOPs per multiply-add as FlopCounterMode does.
    Convolutions, matmuls and their backward passes are counted, element-wise operations
    are not. With `phase_upsample`, the einsum that builds the phase kernels is counted
    too, because it runs on every forward. The networks live on the meta device, so
    nothing is computed.
    """
    half = batch_size // 2
    meta = torch.device("meta")
    with meta:
        model_g = models.build_generator(noise_dim, scale, ngf, phase_upsample)
        model_d = models.build_discriminator(scale, ndf, bn_d)
    targets = torch.empty(batch_size, 1, device=meta).fill_(0.5)
    ones = torch.ones(batch_size, 1, device=meta)
    with FlopCounterMode(display=False) as counter:
        for _ in range(k):
            with torch.no_grad():
                fake = model_g(torch.randn(half, noise_dim, device=meta))
            real = torch.empty(half, 3, scale, scale, device=meta)
            outputs = model_d(torch.cat([real, fake]))
            F.binary_cross_entropy(outputs, targets).backward()
        model_d.requires_grad_(False)
        outputs = model_d(model_g(torch.randn(batch_size, noise_dim, device=meta)))
        F.binary_cross_entropy(outputs, ones).backward()
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def measure_matmul_peak(device, dtype, size, repeats=10, calls=1):
    """Return the best matmul rate in FLOP/s of `size` x `size` matrices in `dtype`.

    Each of `repeats` timed repetitions runs `calls` matmuls, after two untimed ones.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2.0 * size**3 / best


@contextlib.contextmanager
def matmul_tf32_like_convolutions(device, precision):
    """Let float32 CUDA matmuls use TF32 while cuDNN convolutions may, then restore.

    PyTorch 2.x lets cuDNN convolutions use TF32 by default but not matmuls, so a
    float32 matmul peak would understate what the convolutions of the step can reach.
    """
    if device.type != "cuda" or precision != "fp32":
        yield False
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        yield torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


# ---------------------------------------------------------------------------
# Report


@dataclass
class BenchResult:
    """Measurements of one benchmark run; rates derive from them."""

    opt: argparse.Namespace
    device: torch.device
    threads: int
    warmup: int
    flops_by_op: dict
    plain_flops_by_op: dict
    project_step_s: list
    baseline_step_s: list = field(default_factory=list)
    peak_flop_per_s: float = math.nan
    peak_description: str = "not measured"

    @property
    def flops_per_step(self):
        return sum(self.flops_by_op.values())

    @property
    def real_images_per_step(self):
        """Real images per step: half a batch, the count of the Lua's epoch size."""
        return self.opt.batchSize // 2

    @property
    def d_images_per_step(self):
        """Images D classifies per step: a full batch per D update and one for G's update."""
        return (self.opt.K + 1) * self.opt.batchSize

    @property
    def step_s(self):
        return statistics.median(self.project_step_s)

    @property
    def images_per_s(self):
        return self.real_images_per_step / self.step_s

    @property
    def flop_per_s(self):
        return self.flops_per_step / self.step_s

    @property
    def fraction_of_peak(self):
        return self.flop_per_s / self.peak_flop_per_s

    @property
    def baseline_images_per_s(self):
        if not self.baseline_step_s:
            return math.nan
        return self.real_images_per_step / statistics.median(self.baseline_step_s)

    @property
    def speedup(self):
        return self.images_per_s / self.baseline_images_per_s


def format_summary(images_per_s, fraction_of_peak, speedup):
    """Return the last line of the report, every number with 3 significant digits."""
    return (
        f"images_per_s={images_per_s:.3g} fraction_of_peak={fraction_of_peak:.3g} "
        f"speedup_vs_baseline={speedup:.3g}"
    )


def describe_times(times):
    return (
        f"median {statistics.median(times):.4g} s of {len(times)} steps "
        f"(min {min(times):.4g}, max {max(times):.4g})"
    )


def format_report(result):
    """Return the report lines, the summary line last."""
    opt = result.opt
    memory_format = "channels_last" if opt.channelsLast else "contiguous"
    plain_flops = sum(result.plain_flops_by_op.values())
    lines = [
        f"configuration: scale {opt.scale}, ngf {opt.ngf}, ndf {opt.ndf}, noiseDim "
        f"{opt.noiseDim}, batchSize {opt.batchSize}, K {opt.K}, bnD {opt.bnD}, "
        f"optimizer {opt.optimizer}",
        f"device: {result.device} ({result.threads} CPU threads), precision {opt.precision}, "
        f"memory format {memory_format}",
        f"images per step: {result.real_images_per_step} real (batchSize/2, as the Lua's "
        f"epoch counts), {result.d_images_per_step} through D ((K+1)*batchSize)",
        f"project step: {describe_times(result.project_step_s)} after {result.warmup} "
        "warm-up steps",
        f"  real images/s: {result.images_per_s:.4g}",
        f"  images through D/s: {result.d_images_per_step / result.step_s:.4g}",
        f"model FLOPs per step: {result.flops_per_step:.4g} (forward and backward of "
        f"{opt.K} D update(s) and 1 G update, 2 FLOPs per multiply-add)",
        f"  per real image: {result.flops_per_step / result.real_images_per_step:.4g}",
        f"  with plain upsampling + 5x5 convolution instead: {plain_flops:.4g} per step",
        f"achieved: {result.flop_per_s / 1e9:.4g} GFLOP/s",
        f"matmul peak: {result.peak_description}: {result.peak_flop_per_s / 1e9:.4g} GFLOP/s",
        f"fraction of peak: {result.fraction_of_peak:.3g}",
    ]
    if result.baseline_step_s:
        lines += [
            f"baseline step (fp32, contiguous, nn.Upsample + Conv2d, torch.optim, PNG "
            f"DataLoader): {describe_times(result.baseline_step_s)}",
            f"  real images/s: {result.baseline_images_per_s:.4g}",
            f"speedup vs baseline: {result.speedup:.3g}",
        ]
    else:
        lines.append("baseline: not run (--no-baseline)")
    lines.append(format_summary(result.images_per_s, result.fraction_of_peak, result.speedup))
    return lines


# ---------------------------------------------------------------------------
# Command line


def build_parser():
    parser = argparse.ArgumentParser(
        description="Time the training step of train_lfw.py, count its FLOPs, compare them "
        "with a matmul peak and time a straightforward baseline. Every other option is "
        "passed to train_lfw.py (see python train_lfw.py --help), except "
        + ", ".join(f"--{name}" for name in CONTROLLED_OPTIONS)
        + ", which bench.py sets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        # Abbreviations off, so that a prefix of a train_lfw.py option stays with it.
        allow_abbrev=False,
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the straightforward baseline step")
    parser.add_argument("--peak", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the matmul peak")
    parser.add_argument("--peakSize", type=int, default=0,
                        help=f"matrix size of the peak matmul; 0: {CPU_PEAK_SIZE} on the CPU, "
                        f"{CUDA_PEAK_SIZE} on CUDA")
    parser.add_argument("--peakRepeats", type=int, default=10,
                        help="timed repetitions of the peak matmul; the best counts")
    return parser


def parse_options(argv):
    """Return (bench options, train_lfw options, train_lfw arguments)."""
    args, train_argv = build_parser().parse_known_args(argv)
    for name in ("steps", "peakRepeats"):
        if getattr(args, name) < 1:
            raise BenchError(f"invalid --{name} {getattr(args, name)}: use a value >= 1")
    for name in ("warmup", "peakSize"):
        if getattr(args, name) < 0:
            raise BenchError(f"invalid --{name} {getattr(args, name)}: use a value >= 0")
    opt, explicit = train_lfw.parse_options(train_argv)
    controlled = sorted(set(explicit) & set(CONTROLLED_OPTIONS))
    if controlled:
        given = ", ".join(f"--{name}" for name in controlled)
        raise BenchError(f"{given} cannot be set: bench.py sets it to time one epoch; drop it")
    try:
        train_lfw.validate_options(opt)
    except train_lfw.TrainingError as e:
        raise BenchError(str(e)) from e
    return args, opt, train_argv


def run_benchmark(args, opt, train_argv):
    """Run the measurements that `args` selects and return a BenchResult."""
    threads = min(opt.threads, os.cpu_count() or 1)
    device = train_lfw.select_device(opt.gpu)
    flop_args = (opt.noiseDim, opt.scale, opt.ngf, opt.ndf, opt.batchSize)
    flops = count_step_flops(*flop_args, phase_upsample=True, bn_d=opt.bnD, k=opt.K)
    plain_flops = count_step_flops(*flop_args, phase_upsample=False, bn_d=opt.bnD, k=opt.K)
    result = BenchResult(opt, device, threads, args.warmup, flops, plain_flops, [])

    with tempfile.TemporaryDirectory(prefix="bench_lfw_") as workdir:
        log(f"timing {args.warmup} + {args.steps} project steps")
        result.project_step_s = time_project_step(train_argv, opt, workdir, args.warmup, args.steps)
        torch.set_num_threads(threads)
        if args.baseline:
            log(f"timing {args.warmup} + {args.steps} baseline steps")
            result.baseline_step_s = time_baseline_step(
                opt, device, workdir, args.warmup, args.steps
            )
    if args.peak:
        default_size = CUDA_PEAK_SIZE if device.type == "cuda" else CPU_PEAK_SIZE
        size = args.peakSize or default_size
        dtype = torch.bfloat16 if opt.precision == "bf16" else torch.float32
        calls = CUDA_PEAK_CALLS if device.type == "cuda" else CPU_PEAK_CALLS
        log(f"measuring the {size}x{size} matmul peak")
        with matmul_tf32_like_convolutions(device, opt.precision) as tf32:
            result.peak_flop_per_s = measure_matmul_peak(
                device, dtype, size, args.peakRepeats, calls
            )
        kind = "TF32, as cuDNN convolutions" if tf32 else str(dtype).removeprefix("torch.")
        result.peak_description = f"{size}x{size} {kind}, best of {args.peakRepeats}"
    return result


def log(message):
    print(f"<bench> {message}", file=sys.stderr, flush=True)


def main(argv=None):
    try:
        args, opt, train_argv = parse_options(argv)
        result = run_benchmark(args, opt, train_argv)
    except (BenchError, train_lfw.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(format_report(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
