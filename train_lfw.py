"""Train the torch-gan generator and discriminator on LFW faces.

A port of `train_lfw.lua` and `lfw_adverserial.lua`. Reads the LFW cache
that `data_lfw.py` builds, or builds it from `--data`. Writes into `--save`:
`log.csv` (one row per batch), `epochs.csv` (one row per epoch),
`samples_epoch_NNN.png` (a 10x10 grid from a fixed noise batch) and the
checkpoint `adversarial.pt`, with the previous one kept as `adversarial.pt.old`.

    python train_lfw.py --gpu 0 --data path/to/lfw-deepfunneled.tgz
    python train_lfw.py --network logs512_lfw64/adversarial.pt   # resume
    torchrun --nproc_per_node 4 train_lfw.py --gpu 0 --data ...  # 4 GPUs, data-parallel

Under torchrun each process trains one rank on its share of every batch,
and only rank 0 writes the files above.
"""

import argparse
import contextlib
import csv
import datetime
import logging
import math
import os
import pickle
import signal
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data_lfw
import models
import optim_state
from optim_state import balance_l2, balance_margin

CHECKPOINT_NAME = "adversarial.pt"
LOG_COLUMNS = [
    "epoch", "batch", "iteration", "err_gen", "err_fake", "err_real",
    "optimize_D", "optimize_G", "coefL2_D", "lr_D", "lr_G", "time_s",
]
EVAL_COLUMNS = ["epoch", "iteration", "time_s", "images_seen", "swd_avg", "swd_64", "swd_32",
                "swd_16", "face_rate", "diversity", "eval_s"]
EPOCH_COLUMNS = [
    "epoch", "err_gen", "err_fake", "err_real", "skipped_D", "skipped_G",
    "coefL2_D", "lr", "train_acc", "val_acc_real", "val_acc_fake", "val_acc",
    "images_per_s", "time_s",
]
# Options that fix the shape of the networks: a resumed run must match them.
ARCHITECTURE_OPTIONS = ("scale", "noiseDim", "ngf", "ndf", "bnD")
BALANCE_CHOICES = ("none", "margin", "l2", "margin+l2")


class TrainingError(Exception):
    """Error for a run that cannot start or continue. The message gives the cause and the fix."""


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM after writing its checkpoint."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.exit_code = 128 + signum


def build_parser():
    p = argparse.ArgumentParser(
        description="Train the torch-gan GAN on LFW faces.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Options of the Lua, with its names and defaults.
    p.add_argument("-s", "--save", default="logs512_lfw64", help="folder for logs, grids and checkpoints")
    p.add_argument("--saveFreq", type=int, default=1, help="write a checkpoint every saveFreq epochs")
    p.add_argument("-n", "--network", default="", help="checkpoint to resume from")
    p.add_argument("-r", "--learningRate", type=float, default=0.001, help="initial learning rate")
    p.add_argument("-b", "--batchSize", type=int, default=128, help="images per batch, half real and half fake for D")
    p.add_argument("-m", "--momentum", type=float, default=0.0, help="momentum, for SGD only")
    p.add_argument("--coefL1", type=float, default=0.0, help="L1 penalty on D's weights")
    p.add_argument("--coefL2", type=float, default=0.0, help="initial L2 penalty on D's weights")
    p.add_argument("-t", "--threads", type=int, default=4, help="CPU threads, capped at the number of cores")
    p.add_argument("-g", "--gpu", type=int, default=0,
                   help="CUDA device index; -1 for the CPU. Under torchrun any index >= 0 "
                   "selects device LOCAL_RANK and -1 trains every rank on the CPU with Gloo")
    p.add_argument("-d", "--noiseDim", type=int, default=512, help="dimension of the noise vector")
    p.add_argument("--K", type=int, default=1, help="D updates per G update")
    p.add_argument("--scale", type=int, default=64, help="image size in pixels, 32 or 64")

    # Options added by the port.
    p.add_argument("--data", default=None, help="LFW archive (.tgz), extracted folder or HDF5 cache; "
                   "default: data/lfw-deepfunneled.tgz, downloaded when missing")
    p.add_argument("--epochs", type=int, default=100, help="stop after this many epochs")
    p.add_argument("--epochSize", type=int, default=0, help="real images per epoch; 0 for all training images")
    p.add_argument("--nval", type=int, default=233, help="images held out to test D")
    p.add_argument("--balance", choices=BALANCE_CHOICES, default="margin",
                   help="balancing heuristic: skip updates by a margin, adapt D's L2 penalty, both or none")
    p.add_argument("--margin", type=float, default=0.3, help="margin of the skip rule")
    p.add_argument("--optimizer", choices=sorted(optim_state.OPTIMIZERS), default="rmsprop")
    p.add_argument("--ngf", type=int, default=128, help="G filters: G's convolutions have 2*ngf, 2*ngf, ngf")
    p.add_argument("--ndf", type=int, default=32, help="D filters: D's convolutions have ndf, 2*ndf, 3*ndf")
    p.add_argument("--bnD", action="store_true", help="batch norm after each convolution of D")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 runs the networks under bfloat16 autocast; parameters, optimizer "
                   "buffers and losses stay float32")
    p.add_argument("--evalEvery", type=int, default=0,
                   help="every N epochs, append SWD, face-detection rate and diversity to eval.csv; 0: never")
    p.add_argument("--evalSamples", type=int, default=1000,
                   help="generated and real images per evaluation (SWD depends on this count)")
    p.add_argument("--channelsLast", action="store_true",
                   help="store images and convolution weights in channels_last memory format")
    p.add_argument("--syncBN", action=argparse.BooleanOptionalAction, default=False,
                   help="under torchrun on GPUs: batch norm statistics over the whole batch of "
                   "all ranks (SyncBatchNorm) instead of each rank's share; no effect in one process")
    return p


def validate_options(opt, world_size=1):
    """Raise TrainingError for out-of-range options, naming the valid range."""
    if opt.batchSize < 2 or opt.batchSize % 2:
        raise TrainingError(f"invalid --batchSize {opt.batchSize}: use an even number >= 2")
    if opt.batchSize % (2 * world_size):
        raise TrainingError(
            f"invalid --batchSize {opt.batchSize} for {world_size} ranks: each rank trains on "
            f"batchSize / {world_size} images, half real and half generated, so use a multiple "
            f"of {2 * world_size}"
        )
    if opt.scale not in models.VALID_SCALES:
        raise TrainingError(f"invalid --scale {opt.scale}: use one of {models.VALID_SCALES}")
    if opt.learningRate <= 0:
        raise TrainingError(f"invalid --learningRate {opt.learningRate}: use a value > 0")
    for name in ("noiseDim", "ngf", "ndf", "K", "epochs", "saveFreq", "threads"):
        if getattr(opt, name) < 1:
            raise TrainingError(f"invalid --{name} {getattr(opt, name)}: use a value >= 1")
    for name in ("epochSize", "nval", "coefL1", "coefL2", "momentum", "evalEvery"):
        if getattr(opt, name) < 0:
            raise TrainingError(f"invalid --{name} {getattr(opt, name)}: use a value >= 0")
    if not 0 < opt.margin < 0.5:
        raise TrainingError(f"invalid --margin {opt.margin}: use a value in (0, 0.5)")
    if opt.evalSamples < 2:
        raise TrainingError(
            f"invalid --evalSamples {opt.evalSamples}: use a value >= 2, because the "
            "diversity metric compares pairs of samples"
        )


def parse_options(argv=None):
    """Parse the command line; return the options and the names given explicitly."""
    parser = build_parser()
    opt = parser.parse_args(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    explicit = set(vars(parser.parse_args(argv)))
    return opt, explicit


def merge_saved_options(opt, explicit, saved):
    """Continue a resumed run with its saved options, except those given now.

    An architecture option given now that contradicts the checkpoint is
    rejected, because the saved weights would not fit the networks. Other
    options given now (`--epochs`, `--learningRate`, ...) override the saved
    ones; `--save` defaults to the checkpoint's folder.
    """
    for name in ARCHITECTURE_OPTIONS:
        if name in explicit and getattr(opt, name) != saved[name]:
            raise TrainingError(
                f"--{name} {getattr(opt, name)} contradicts the checkpoint, which was trained "
                f"with --{name} {saved[name]}; drop the option or start a new run"
            )
    for name, value in saved.items():
        if name not in explicit and name not in ("network", "save") and hasattr(opt, name):
            setattr(opt, name, value)
    if "save" not in explicit:
        opt.save = str(Path(opt.network).parent)


def select_device(gpu, local_rank=None):
    """Return the torch device for `--gpu`, falling back to the CPU with a message.

    Under torchrun (`local_rank` given) any `--gpu` >= 0 selects device
    `local_rank`, so that each process on a machine has a GPU of its own.
    """
    if gpu < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print(f"<gpu> CUDA is not available; --gpu {gpu} falls back to the CPU")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if local_rank >= count:
            raise TrainingError(
                f"no CUDA device for LOCAL_RANK {local_rank}: this machine has {count}. "
                f"Start at most {count} processes per machine (torchrun --nproc_per_node {count})"
            )
        gpu = local_rank
    elif gpu >= count:
        raise TrainingError(f"invalid --gpu {gpu}: this machine has {count} CUDA devices")
    print(f"<gpu> using device {gpu}")
    return torch.device("cuda", gpu)


# ---------------------------------------------------------------------------
# Checkpoints


def rng_state(device, data_generator):
    """Return every random state the run uses, as tensors."""
    state = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device, data_generator):
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path, payload):
    """Write `payload` atomically; the previous checkpoint becomes `path.old`.

    The data go to a temporary file in the same folder, which is flushed and
    synced before the renames, so a crash or a full disk leaves the last good
    checkpoint in place. A failed write raises TrainingError, which names the
    cause and the checkpoint that is kept.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        sync_folder(path.parent)
    except (OSError, RuntimeError) as e:
        # torch.save reports a failed write as a RuntimeError whose context is the OSError.
        tmp.unlink(missing_ok=True)
        kept = next((p for p in (path, old) if p.is_file()), None)
        if kept is None:
            advice = "No checkpoint of this run was written yet. Fix the cause and start again"
        else:
            advice = (f"The previous checkpoint {kept} is unchanged. Fix the cause, then "
                      f"resume with: python train_lfw.py --network {kept}")
        raise TrainingError(f"cannot write checkpoint {path}: {write_failure_reason(e)}. "
                            f"{advice}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_failure_reason(error):
    """Return the OS error message behind `error`, or `error` itself when there is none."""
    cause = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return f"{type(error).__name__}: {error}"


def sync_folder(folder):
    """Flush a folder's entries to disk, so that renames in it survive a power loss."""
    if os.name != "posix":  # Windows cannot open a folder as a file
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHECKPOINT_KEYS = {"G", "D", "sgdState_D", "sgdState_G", "opt", "epoch", "next_batch",
                   "iteration", "time_s", "fixed_noise", "rng", "epoch_counts"}


def load_checkpoint(path):
    """Load a checkpoint with `weights_only=True`, so it cannot run code.

    Raises TrainingError for a missing, truncated or foreign file. When the
    file cannot be read, the message points to `path.old`, the checkpoint
    written before it.
    """
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if old.is_file() and path != old:
        fallback = f"Resume from the previous checkpoint instead: --network {old}"
    else:
        fallback = "Pass an adversarial.pt or adversarial.pt.old that train_lfw.py wrote"
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}. {fallback}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only names the first object outside its allowlist as "Unsupported global".
        if "Unsupported global" not in str(e):
            raise TrainingError(f"cannot load checkpoint {path}: it is damaged "
                                f"({load_failure_reason(e)}). {fallback}") from e
        raise TrainingError(
            f"rejected checkpoint {path}: it contains Python objects other than tensors and "
            f"plain values ({load_failure_reason(e)}), and loading them could run code. "
            "Pass a checkpoint that train_lfw.py wrote"
        ) from e
    except Exception as e:  # torch.load raises many types for damaged files
        raise TrainingError(f"cannot load checkpoint {path}: it is truncated or damaged "
                            f"({load_failure_reason(e)}). {fallback}") from e
    if not isinstance(ckpt, dict):
        raise TrainingError(f"invalid checkpoint {path}: it contains a {type(ckpt).__name__}, "
                            f"not the dict that train_lfw.py writes. {fallback}")
    missing = CHECKPOINT_KEYS - set(ckpt)
    if missing:
        raise TrainingError(f"invalid checkpoint {path}: missing {sorted(missing)}. {fallback}")
    return ckpt


def load_failure_reason(error):
    """Return one line on why torch.load failed, without torch's multi-line advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        # The line that names the rejected object or opcode in a weights_only failure.
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            detail = detail or " ".join(lines[i + 1 : i + 2])
            return detail.split(" Please")[0].rstrip(".")
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0].split('. ')[0][:200]}"


def check_save_folder(save_dir, network):
    """Reject a run whose checkpoints would replace those of another run in `save_dir`."""
    ckpt_path = save_dir / CHECKPOINT_NAME
    found = [p for p in (ckpt_path, save_dir / f"{CHECKPOINT_NAME}.old") if p.exists()]
    if not found:
        return
    if network and Path(network).resolve().parent == save_dir.resolve():
        return
    if network:
        action = f"drop -s to continue in {Path(network).parent}"
    else:
        action = f"resume that run with --network {found[0]}"
    raise TrainingError(
        f"--save {save_dir} already contains {found[0].name} of another run, which this "
        f"run would overwrite. To keep it, {action} or pass another --save. To start over "
        "in that folder, delete it first"
    )


def state_to(state, device):
    """Return a copy of an sgdState dict with its tensors moved to `device`."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in state.items()}


# ---------------------------------------------------------------------------
# Outputs


def save_grid(images, path, nrow=10, padding=2):
    """Write images in [-1, 1], (N, 3, H, W), as one PNG grid of `nrow` columns."""
    images = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().cpu()
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding,
                       dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def truncate_csv(path, columns, keep):
    """Keep the header and the rows of a CSV for which `keep(row)` is true."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if keep(r)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def open_csv(path, columns):
    """Open a CSV for appending, writing the header when the file is new.

    The file is line-buffered, so readers such as plot_monitor.py see each row
    as soon as it is written.
    """
    new = not path.exists() or path.stat().st_size == 0
    f = open(path, "a", newline="", buffering=1)
    writer = csv.writer(f)
    if new:
        writer.writerow(columns)
    return f, writer


# ---------------------------------------------------------------------------
# Several processes (torchrun)


class Ranks:
    """The processes of a torchrun job, or the one process of a plain run.

    A plain run (`distributed=False`) has no process group, and every
    collective returns its input unchanged, so the run trains exactly as it
    would without this class.
    """

    def __init__(self, rank=0, world_size=1, local_rank=0, distributed=False):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.distributed = distributed
        self.device = torch.device("cpu")  # where the collectives' tensors live
        self.joined = False

    @property
    def is_main(self):
        """Whether this process writes the logs, grids and checkpoints."""
        return self.rank == 0

    @property
    def is_local_main(self):
        """Whether this process is the first one on its machine."""
        return self.local_rank == 0

    def join(self, device, init_method="env://"):
        """Join the job's process group: NCCL for a CUDA device, Gloo for the CPU.

        With the default `init_method`, torchrun's variables MASTER_ADDR and
        MASTER_PORT give the address of the rendezvous store.
        """
        if not self.distributed:
            return
        # The other ranks wait in a collective while rank 0 tests D, draws the grid
        # and runs --evalEvery's metrics. NCCL's default timeout of 10 minutes could
        # abort a long evaluation, so both backends get Gloo's default of 30.
        timeout = datetime.timedelta(minutes=30)
        # NOTE: the NCCL branch and --syncBN have not run on GPUs. The tests cover
        # Gloo on the CPU only.
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", init_method=init_method, rank=self.rank,
                                    world_size=self.world_size, timeout=timeout,
                                    device_id=device)
        else:
            dist.init_process_group("gloo", init_method=init_method, rank=self.rank,
                                    world_size=self.world_size, timeout=timeout)
        self.device = device
        self.joined = True

    def mean(self, values):
        """Return the means of `values` (a list of floats) over all ranks, in one all-reduce."""
        if not self.joined:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return (total / self.world_size).tolist()

    def max(self, value):
        """Return the maximum of the integer `value` over all ranks."""
        if not self.joined:
            return value
        result = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(result, op=dist.ReduceOp.MAX)
        return int(result.item())

    def barrier(self):
        """Wait until every rank gets here."""
        if self.joined:
            self.max(0)

    def leave(self):
        """Destroy the process group, if this process joined one."""
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
        self.joined = False


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def ranks_from_environment(environ):
    """Return the Ranks that torchrun's variables describe, or None outside torchrun."""
    present = [name for name in TORCHRUN_VARIABLES if name in environ]
    if not present:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise TrainingError(
            f"incomplete torchrun environment: {', '.join(present)} set but "
            f"{', '.join(missing)} missing. Launch with torchrun, or unset {', '.join(present)} "
            "to train in one process"
        )
    values = {}
    for name in TORCHRUN_VARIABLES:
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise TrainingError(f"invalid {name}={environ[name]!r}: expected an integer, "
                                "as torchrun sets it") from None
    rank, world_size = values["RANK"], values["WORLD_SIZE"]
    if world_size < 1 or not 0 <= rank < world_size or values["LOCAL_RANK"] < 0:
        raise TrainingError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, "
                            f"LOCAL_RANK={values['LOCAL_RANK']}; expected 0 <= RANK < WORLD_SIZE")
    return Ranks(rank, world_size, values["LOCAL_RANK"], distributed=True)


def prepare_data_in_turn(opt, ranks):
    """Return the cache path, built or downloaded by each machine's first rank alone.

    The other ranks wait, then find the finished cache, so no two processes
    write the same archive or cache file at once.
    """
    if not ranks.is_local_main:
        ranks.barrier()
    cache = data_lfw.prepare_data(opt.data, scale=opt.scale)
    if ranks.is_local_main:
        ranks.barrier()
    return cache


def convert_sync_batchnorm(model, opt, device, ranks):
    """Return `model` with SyncBatchNorm layers when `--syncBN` applies, else `model`.

    Without `--syncBN` each rank normalizes with the statistics of its own
    share of the batch. That needs no collective per layer, but G's batch
    norm in D's step then averages over batchSize / (2 * ranks) samples
    instead of batchSize / 2.
    SyncBatchNorm computes the statistics of the whole batch, as one process
    would, at the cost of an all-gather in every batch-norm layer's forward
    and an all-reduce in its backward. PyTorch 2.13's SyncBatchNorm raises
    a ValueError for CPU tensors, so `--syncBN` needs CUDA devices.
    """
    if not opt.syncBN or ranks.world_size == 1:
        return model
    if device.type != "cuda":
        raise TrainingError(
            f"--syncBN needs CUDA devices, but rank {ranks.rank} trains on the {device.type}: "
            "PyTorch's SyncBatchNorm rejects CPU tensors. Use --no-syncBN to normalize with "
            "each rank's batch statistics"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_data_parallel(model, device, ranks):
    """Return `model` in DistributedDataParallel under torchrun, else `model` itself.

    DDP averages the gradients over the ranks during backward. With
    `gradient_as_bucket_view=False` it copies the averaged buckets into the
    existing `.grad` tensors, so they stay views of the flat gradient of
    `optim_state.flatten_parameters`. Construction broadcasts rank 0's
    parameters and buffers in place, so all ranks start equal, also after a
    resume. `forward_sync_buffers=False` leaves each rank its own batch-norm
    running statistics (rank 0's go into the checkpoint) and saves a
    broadcast per forward.
    """
    if not ranks.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=False,
                                   forward_sync_buffers=False)


def rank_share(order, batch, half, ranks):
    """Return this rank's indices of the real images of `batch` (from 1) in `order`.

    The batch has `half` real images, and rank r takes the r-th of
    `ranks.world_size` contiguous equal parts. Together the ranks train on
    the batch that one process would.
    """
    share = half // ranks.world_size
    first = (batch - 1) * half + ranks.rank * share
    return order[first : first + share]


def reseed_for_rank(ranks):
    """Give each rank > 0 a torch random stream of its own, so that its noise differs.

    The seed derives from the current torch state, which is the same on all
    ranks (the seeded start, or rank 0's state from a checkpoint), plus the
    rank. Rank 0 keeps its stream. The CUDA generators are reseeded too.
    """
    if ranks.rank == 0:
        return
    generator = torch.Generator()
    generator.set_state(torch.get_rng_state())
    base = int(torch.randint(2**62, (1,), generator=generator).item())
    torch.manual_seed(base + ranks.rank)


# ---------------------------------------------------------------------------
# Training


class StopRequest:
    """Turns SIGINT and SIGTERM into a flag that the loop checks after each batch.

    In a plain run a second signal stops at once. Under torchrun (`ranks`
    given) a second signal is ignored: after Ctrl-C every worker gets the
    terminal's SIGINT and then the one torchrun forwards, and torchrun kills
    workers with SIGKILL 30 s after forwarding anyway. Only rank 0 prints.
    """

    def __init__(self, ranks=None):
        self.signal = None
        self.ranks = ranks

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            if self.ranks is None:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            return
        self.signal = signum
        # os.write, because a print could interrupt a print of the loop and raise
        # "reentrant call" on the buffered stdout.
        if self.ranks is None:
            os.write(2, b"\n<trainer> stop requested: finishing the batch and writing a "
                        b"checkpoint (press Ctrl-C again to stop at once)\n")
        elif self.ranks.is_main:
            os.write(2, b"\n<trainer> stop requested: all ranks finish the batch, then rank 0 "
                        b"writes a checkpoint\n")

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def accuracy(outputs, targets):
    """Return the share of outputs on the right side of 0.5."""
    return ((outputs.view(-1) > 0.5).float() == targets.view(-1)).float().mean().item()


@torch.no_grad()
def test_discriminator(model_G, model_D, val_real, noise_dim, batch_size, device):
    """Return D's accuracy on held-out real images and on as many fresh fakes.

    Both networks are in eval mode, as in the Lua's `adversarial.test`.
    """
    model_G.eval()
    model_D.eval()
    real_correct = fake_correct = 0
    for start in range(0, len(val_real), batch_size):
        real = data_lfw.to_float(val_real[start : start + batch_size].to(device))
        real_correct += (model_D(real) > 0.5).sum().item()
        noise = torch.randn(len(real), noise_dim, device=device)
        fake_correct += (model_D(model_G(noise)) <= 0.5).sum().item()
    model_G.train()
    model_D.train()
    n = max(len(val_real), 1)
    return real_correct / n, fake_correct / n


@torch.no_grad()
def generate_uint8(model_G, count, noise_dim, batch_size, device, seed):
    """Return `count` samples of G in eval mode as uint8 (N, 3, S, S) on the CPU.

    The noise comes from its own generator, so evaluations do not disturb
    the training's random stream.
    """
    generator = torch.Generator().manual_seed(seed)
    model_G.eval()
    chunks = []
    for start in range(0, count, batch_size):
        noise = torch.randn(min(batch_size, count - start), noise_dim, generator=generator)
        images = model_G(noise.to(device)).float().clamp(-1, 1)
        chunks.append(images.add(1).mul(127.5).round().byte().cpu())
    model_G.train()
    return torch.cat(chunks)


def evaluate_samples(model_G, eval_real, opt, device):
    """Return the quality metrics of `opt.evalSamples` samples against real images."""
    import metrics  # imported here: only runs with --evalEvery need it

    start = time.time()
    fake = generate_uint8(model_G, len(eval_real), opt.noiseDim, opt.batchSize, device, opt.seed)
    result = metrics.evaluate(fake, eval_real, seed=opt.seed)
    result["eval_s"] = time.time() - start
    return result


def check_finite(value, what, epoch, batch):
    if not math.isfinite(value):
        raise TrainingError(
            f"{what} is {value} at epoch {epoch}, batch {batch}; training stopped without "
            "writing a checkpoint. The last checkpoint written is kept: resume from it with "
            "a lower --learningRate"
        )


def check_finite_tensor(tensor, what, epoch, batch):
    """Raise TrainingError when `tensor` has a NaN or infinite element."""
    if not torch.isfinite(tensor).all():
        bad = tensor[~torch.isfinite(tensor)][0].item()
        check_finite(bad, what, epoch, batch)


def scheduled_learning_rate(initial, epoch):
    """Return the learning rate of `epoch` (from 1): the initial one, then initial * 0.99^epoch.

    The Lua decays after its epoch counter has advanced, so epoch 2 already has 0.99^2.
    """
    if epoch == 1:
        return initial
    return max(initial * 0.99**epoch, 1e-6)


def main(argv=None):
    """Run the training program; return 0, 2 on an error, or 128 + signal on SIGINT/SIGTERM.

    Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK set) the process trains
    one rank, and an unexpected exception returns 1 after a message that
    names the rank.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    opt, explicit = parse_options(argv)
    try:
        ranks = ranks_from_environment(os.environ)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ranks is None:
        return run_and_report(opt, explicit, Ranks())
    return run_rank(opt, explicit, ranks)


def run_rank(opt, explicit, ranks):
    """Train as one rank of a torchrun job; return its exit code.

    Ranks other than 0 print only errors. Any failure prints "rank R: error:
    ..." and returns non-zero, so torchrun stops the other ranks.
    """
    prefix = f"rank {ranks.rank}: "
    try:
        with contextlib.ExitStack() as stack:
            if not ranks.is_main:
                logging.getLogger().setLevel(logging.WARNING)
                devnull = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(devnull))
            return run_and_report(opt, explicit, ranks, prefix)
    except Exception as e:  # every failure must name its rank before torchrun stops the job
        traceback.print_exc()
        print(f"{prefix}error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        ranks.leave()


def run_and_report(opt, explicit, ranks, prefix=""):
    """Train and turn the expected failures into a message and an exit code."""
    try:
        train(opt, explicit, ranks)
    except Interrupted as e:
        print(e)
        return e.exit_code
    except (TrainingError, data_lfw.DataError) as e:
        print(f"{prefix}error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prefix}error: {e}. Checkpoints already written are kept. Resume from the "
              "last one with --network", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}error: interrupted before a checkpoint could be written. Checkpoints "
              "already written are kept. Resume from the last one with --network",
              file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


def train(opt, explicit=frozenset(), ranks=None):
    """Train G and D with the options `opt`, as one rank of `ranks` (default: one process)."""
    ranks = ranks or Ranks()
    ckpt = load_checkpoint(opt.network) if opt.network else None
    if ckpt:
        merge_saved_options(opt, explicit, ckpt["opt"])
    validate_options(opt, ranks.world_size)
    print(vars(opt))

    torch.manual_seed(opt.seed)
    threads = min(opt.threads, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    print(f"<torch> set nb of threads to {torch.get_num_threads()}")
    device = select_device(opt.gpu, ranks.local_rank if ranks.distributed else None)
    save_dir = Path(opt.save)
    ckpt_path = save_dir / CHECKPOINT_NAME
    if ranks.is_main:
        check_save_folder(save_dir, opt.network)
    ranks.join(device)

    # Data: uint8 in memory (on the device), converted to [-1, 1] per batch.
    cache = prepare_data_in_turn(opt, ranks)
    data = torch.from_numpy(data_lfw.load_uint8(cache))
    if opt.nval >= len(data):
        raise TrainingError(f"invalid --nval {opt.nval}: the data has only {len(data)} images")
    ntrain = len(data) - opt.nval
    train_data, val_data = data[:ntrain].to(device), data[ntrain:].to(device)
    epoch_size = opt.epochSize or ntrain
    if epoch_size > ntrain:
        raise TrainingError(f"invalid --epochSize {epoch_size}: use at most {ntrain}, the training images")
    half = opt.batchSize // 2
    # Each rank trains on its share of every batch: rank_half real and rank_half fake images.
    rank_half = half // ranks.world_size
    batches_per_epoch = epoch_size // half
    if batches_per_epoch == 0:
        raise TrainingError(f"--epochSize {epoch_size} is smaller than half a batch ({half})")
    eval_real = None
    if opt.evalEvery:
        if opt.evalSamples > len(data):
            raise TrainingError(f"invalid --evalSamples {opt.evalSamples}: the data has {len(data)} images")
        # A fixed draw from the whole cache: the held-out images alone are too few for SWD.
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(opt.seed))
        eval_real = data[pick[: opt.evalSamples]]
    print(f"<data> {cache}: {ntrain} training and {opt.nval} held-out images, "
          f"{batches_per_epoch} batches per epoch")

    if ranks.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
    memory_format = torch.channels_last if opt.channelsLast else torch.contiguous_format
    model_G = models.build_generator(opt.noiseDim, opt.scale, opt.ngf)
    model_D = models.build_discriminator(opt.scale, opt.ndf, opt.bnD)
    model_G = convert_sync_batchnorm(model_G, opt, device, ranks)
    model_D = convert_sync_batchnorm(model_D, opt, device, ranks)
    model_G.to(device, memory_format=memory_format)
    model_D.to(device, memory_format=memory_format)
    optimize = optim_state.OPTIMIZERS[opt.optimizer]
    data_generator = torch.Generator()
    data_generator.manual_seed(opt.seed)
    fixed_noise = torch.randn(100, opt.noiseDim)

    if ckpt:
        model_G.load_state_dict(ckpt["G"])
        model_D.load_state_dict(ckpt["D"])
        sgdState_D = state_to(ckpt["sgdState_D"], device)
        sgdState_G = state_to(ckpt["sgdState_G"], device)
        epoch, next_batch = ckpt["epoch"], ckpt["next_batch"]
        iteration, elapsed = ckpt["iteration"], ckpt["time_s"]
        fixed_noise = ckpt["fixed_noise"]
        epoch_counts = ckpt["epoch_counts"]
        if "learningRate" in explicit:
            for state in (sgdState_D, sgdState_G):
                state["learningRate"] = scheduled_learning_rate(opt.learningRate, epoch)
        print(f"<trainer> reloading previously trained network: {opt.network} "
              f"(epoch {epoch}, batch {next_batch})")
    else:
        sgdState_D = optim_state.new_sgd_state(opt.learningRate, opt.momentum, opt.coefL2)
        # The Lua penalises only D, so G's coefL2 stays 0.
        sgdState_G = optim_state.new_sgd_state(opt.learningRate, opt.momentum, 0.0)
        epoch, next_batch, iteration, elapsed = 1, 1, 0, 0.0
        epoch_counts = None
    fixed_noise = fixed_noise.to(device)
    # Flatten after moving to the device and memory format: the flat tensors
    # are what the optimizers update.
    parameters_D, gradParameters_D = optim_state.flatten_parameters(model_D)
    parameters_G, gradParameters_G = optim_state.flatten_parameters(model_G)
    # DDP averages the gradients. It was kept over one all-reduce of each flat
    # gradient because it overlaps the communication with the backward pass,
    # and it keeps the flat views. Only the forwards whose backward needs the
    # module's gradient go through the wrappers. G's no-grad forward in D's
    # step and D's forward in G's step, where D is frozen, use the plain models.
    parallel_D = wrap_data_parallel(model_D, device, ranks)
    parallel_G = wrap_data_parallel(model_G, device, ranks)
    print("Discriminator network:", model_D, f"{parameters_D.numel():,} parameters", sep="\n")
    print("Generator network:", model_G, f"{parameters_G.numel():,} parameters", sep="\n")

    log_path, epochs_path = save_dir / "log.csv", save_dir / "epochs.csv"
    eval_path = save_dir / "eval.csv"
    if ckpt:
        if ranks.is_main:
            # Rows written after the checkpoint are replayed by the resumed run.
            truncate_csv(log_path, LOG_COLUMNS, lambda r: int(r["iteration"]) <= iteration)
            truncate_csv(epochs_path, EPOCH_COLUMNS, lambda r: int(r["epoch"]) < epoch)
            truncate_csv(eval_path, EVAL_COLUMNS, lambda r: int(r["epoch"]) < epoch)
        set_rng_state(ckpt["rng"], device, data_generator)
    elif ranks.is_main:
        for path in (log_path, epochs_path, eval_path):
            path.unlink(missing_ok=True)
        model_G.eval()
        with torch.no_grad():
            save_grid(model_G(fixed_noise), save_dir / "samples_epoch_000.png")
        model_G.train()
    # The data generator stays the same on all ranks, so they draw the same permutations.
    reseed_for_rank(ranks)

    def autocast():
        if opt.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    use_margin = opt.balance in ("margin", "margin+l2")
    use_l2 = opt.balance in ("l2", "margin+l2")
    targets = torch.cat([torch.ones(rank_half, 1), torch.zeros(rank_half, 1)]).to(device)
    ones = torch.ones(2 * rank_half, 1, device=device)
    noise_inputs = torch.empty(2 * rank_half, opt.noiseDim, device=device)
    monitor = {}

    def fevalD(x):
        """Return D's loss and gradient on `inputs`, deciding the margin rule first.

        The errors and the gradient are averaged over the ranks, so all ranks
        take the same decision and the same step.
        """
        gradParameters_D.zero_()
        with autocast():
            outputs = parallel_D(inputs)  # float32 probabilities, (2 * rank_half, 1)
        # binary_cross_entropy raises a RuntimeError on NaN, so check first.
        check_finite_tensor(outputs, "D's output", epoch, batch)
        err_R = F.binary_cross_entropy(outputs[:rank_half], targets[:rank_half])
        err_F = F.binary_cross_entropy(outputs[rank_half:], targets[rank_half:])
        monitor["err_R"], monitor["err_F"], monitor["correct_D"] = ranks.mean(
            [err_R.item(), err_F.item(), accuracy(outputs, targets)])
        if use_margin:
            balance_margin(monitor["err_R"], monitor["err_F"], sgdState_D, sgdState_G, opt.margin)
        f = F.binary_cross_entropy(outputs, targets)
        f.backward()
        loss = optim_state.add_penalties(
            f.item(), x, gradParameters_D, opt.coefL1, sgdState_D["coefL2"]
        )
        # Checked before the optimizer applies them, so the parameters stay finite.
        check_finite(loss, "D's loss", epoch, batch)
        check_finite_tensor(gradParameters_D, "D's gradient", epoch, batch)
        return loss, gradParameters_D

    def fevalG(x):
        """Return G's loss (fooling D, target 1) and gradient on `noise_inputs`.

        Loss and gradient are averaged over the ranks.
        """
        gradParameters_G.zero_()
        with autocast():
            outputs = model_D(parallel_G(noise_inputs))
        check_finite_tensor(outputs, "D's output on G's samples", epoch, batch)
        f = F.binary_cross_entropy(outputs, ones)
        f.backward()
        (mean_f,) = ranks.mean([f.item()])
        loss = optim_state.add_penalties(mean_f, x, gradParameters_G, 0.0, sgdState_G["coefL2"])
        check_finite(loss, "G's loss", epoch, batch)
        check_finite_tensor(gradParameters_G, "G's gradient", epoch, batch)
        return loss, gradParameters_G

    if ranks.is_main:
        log_file, log_writer = open_csv(log_path, LOG_COLUMNS)
        epochs_file, epochs_writer = open_csv(epochs_path, EPOCH_COLUMNS)
    model_G.train()
    model_D.train()

    def checkpoint_payload(next_epoch, batch, counts):
        return {
            "G": model_G.state_dict(), "D": model_D.state_dict(),
            "sgdState_D": sgdState_D, "sgdState_G": sgdState_G,
            "opt": {k: v for k, v in vars(opt).items()},
            "epoch": next_epoch, "next_batch": batch, "iteration": iteration,
            "time_s": elapsed, "fixed_noise": fixed_noise.cpu(),
            "rng": rng_state(device, data_generator), "epoch_counts": counts,
        }

    def report_epoch(counts, epoch_start, images):
        """Test D, draw the grid and write the epoch's rows; rank 0 only."""
        n = max(counts["n"], 1)
        val_real, val_fake = test_discriminator(
            model_G, model_D, val_data, opt.noiseDim, opt.batchSize, device)
        model_G.eval()
        with torch.no_grad():
            grid_path = save_dir / f"samples_epoch_{epoch:03d}.png"
            save_grid(model_G(fixed_noise), grid_path)
        model_G.train()
        epoch_time = time.time() - epoch_start
        summary = {
            "epoch": epoch, "err_gen": counts["err_gen"] / n, "err_fake": counts["err_fake"] / n,
            "err_real": counts["err_real"] / n, "skipped_D": counts["skipped_D"] / n,
            "skipped_G": counts["skipped_G"] / n, "coefL2_D": sgdState_D["coefL2"],
            "lr": sgdState_D["learningRate"], "train_acc": counts["correct_D"] / n,
            "val_acc_real": val_real, "val_acc_fake": val_fake,
            "val_acc": (val_real + val_fake) / 2, "images_per_s": images / max(epoch_time, 1e-9),
            "time_s": elapsed,
        }
        epochs_writer.writerow([f"{summary[c]:.6g}" if isinstance(summary[c], float)
                                else summary[c] for c in EPOCH_COLUMNS])
        log_file.flush()
        epochs_file.flush()
        print(f"<trainer> epoch {epoch}: gen {summary['err_gen']:.3f} fake {summary['err_fake']:.3f} "
              f"real {summary['err_real']:.3f} | skipped D {summary['skipped_D']:.0%} "
              f"G {summary['skipped_G']:.0%} | coefL2 {summary['coefL2_D']:.2e} | "
              f"D acc train {summary['train_acc']:.1%} val {summary['val_acc']:.1%} | "
              f"{summary['images_per_s']:.1f} img/s | {grid_path}")

        if opt.evalEvery and epoch % opt.evalEvery == 0:
            result = evaluate_samples(model_G, eval_real, opt, device)
            row = {"epoch": epoch, "iteration": iteration, "time_s": f"{elapsed:.3f}",
                   "images_seen": iteration * half * opt.K, **result}
            eval_file, eval_writer = open_csv(eval_path, EVAL_COLUMNS)
            with eval_file:
                # Levels above the image size (swd_64 at scale 32) stay empty.
                eval_writer.writerow([f"{row[c]:.6g}" if isinstance(row.get(c), float)
                                      else row.get(c, "") for c in EVAL_COLUMNS])
            print(f"<eval> epoch {epoch}: swd_avg {result['swd_avg']:.2f} face_rate "
                  f"{result['face_rate']:.3f} diversity {result['diversity']:.3f} "
                  f"({opt.evalSamples} samples, {result['eval_s']:.0f} s)")

    with StopRequest(ranks if ranks.distributed else None) as stop:
        while epoch <= opt.epochs:
            # The permutation is drawn from the data generator's state at the
            # epoch's start, so a resume mid-epoch draws the same one.
            if epoch_counts:
                data_generator.set_state(epoch_counts["start_epoch_rng"])
            epoch_rng = data_generator.get_state()
            order = torch.randperm(ntrain, generator=data_generator)[: batches_per_epoch * half]
            counts = epoch_counts or {"n": 0, "err_gen": 0.0, "err_fake": 0.0, "err_real": 0.0,
                                      "skipped_D": 0, "skipped_G": 0, "correct_D": 0.0,
                                      "start_epoch_rng": epoch_rng}
            epoch_counts = None
            epoch_start, images = time.time(), 0
            print(f"\n<trainer> online epoch # {epoch} [batchSize = {opt.batchSize} "
                  f"lr = {sgdState_D['learningRate']:.6g}, momentum = {sgdState_D['momentum']:.4g}]")
            bar = tqdm(range(next_batch, batches_per_epoch + 1), desc=f"epoch {epoch}",
                       initial=next_batch - 1, total=batches_per_epoch, leave=False,
                       dynamic_ncols=True, file=sys.stdout, disable=not ranks.is_main,
                       # Redirected to a file, the bar is written every 30 s, not 10 times a second.
                       mininterval=0.1 if sys.stdout.isatty() else 30)
            for batch in bar:
                step_start = time.time()
                idx = rank_share(order, batch, half, ranks).to(device)

                # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z))).
                #     Half a batch of real images, half of generated ones.
                real = data_lfw.to_float(train_data[idx])
                for _ in range(opt.K):
                    noise_inputs.normal_(0, 1)
                    with torch.no_grad(), autocast():
                        fake = model_G(noise_inputs[rank_half:])
                    inputs = torch.cat([real, fake.float()]).contiguous(memory_format=memory_format)
                    optimize(fevalD, parameters_D, sgdState_D)

                # (2) Update G network: maximize log(D(G(z))).
                noise_inputs.normal_(0, 1)
                model_D.requires_grad_(False)  # D's gradient is not needed here
                _, (err_G,) = optimize(fevalG, parameters_G, sgdState_G)
                model_D.requires_grad_(True)
                # A finite gradient can still overflow in the update.
                if not (torch.isfinite(parameters_D).all() and torch.isfinite(parameters_G).all()):
                    check_finite(float("nan"), "a parameter", epoch, batch)

                # (3) Adapt D's L2 penalty to how well G fools it.
                if use_l2:
                    balance_l2(err_G, sgdState_D)

                iteration += 1
                images += opt.batchSize
                elapsed += time.time() - step_start
                err_R, err_F = monitor["err_R"], monitor["err_F"]
                if ranks.is_main:
                    log_writer.writerow([
                        epoch, batch, iteration, f"{err_G:.6f}", f"{err_F:.6f}", f"{err_R:.6f}",
                        int(sgdState_D["optimize"]), int(sgdState_G["optimize"]),
                        f"{sgdState_D['coefL2']:.6g}", f"{sgdState_D['learningRate']:.6g}",
                        f"{sgdState_G['learningRate']:.6g}", f"{elapsed:.6f}",
                    ])
                counts["n"] += 1
                counts["err_gen"] += err_G
                counts["err_fake"] += err_F
                counts["err_real"] += err_R
                counts["skipped_D"] += int(not sgdState_D["optimize"])
                counts["skipped_G"] += int(not sgdState_G["optimize"])
                counts["correct_D"] += monitor["correct_D"]
                bar.set_postfix(gen=f"{err_G:.3f}", fake=f"{err_F:.3f}", real=f"{err_R:.3f}")

                # A signal may reach the ranks in different batches, so they agree first.
                stop_signal = ranks.max(stop.signal or 0)
                if stop_signal and batch < batches_per_epoch:
                    if ranks.is_main:
                        log_file.flush()
                        save_checkpoint(ckpt_path, checkpoint_payload(epoch, batch + 1, counts))
                    bar.close()
                    raise_interrupted(stop_signal, ckpt_path, epoch, batch)
            bar.close()

            # End of epoch: test D, draw the grid, log, decay, checkpoint.
            # The other ranks wait for rank 0's report in the all-reduce of the stop flag.
            if ranks.is_main:
                report_epoch(counts, epoch_start, images)
            stop_signal = ranks.max(stop.signal or 0)

            # The Lua decays after `epoch` has already advanced, hence epoch + 1.
            for state in (sgdState_D, sgdState_G):
                state["momentum"] = min(state["momentum"] + 0.0008, 0.7)
                state["learningRate"] = scheduled_learning_rate(opt.learningRate, epoch + 1)
            epoch += 1
            next_batch = 1
            if ranks.is_main and ((epoch - 1) % opt.saveFreq == 0 or epoch > opt.epochs
                                  or stop_signal):
                save_checkpoint(ckpt_path, checkpoint_payload(epoch, 1, None))
                print(f"<trainer> saving network to {ckpt_path}")
            if stop_signal:
                raise_interrupted(stop_signal, ckpt_path, epoch - 1, batches_per_epoch)
    if ranks.is_main:
        log_file.close()
        epochs_file.close()


def raise_interrupted(signum, ckpt_path, epoch, batch):
    name = signal.Signals(signum).name
    raise Interrupted(signum, f"<trainer> {name} received: stopped after epoch {epoch}, batch "
                      f"{batch}; checkpoint written to {ckpt_path}.\n"
                      f"Resume with: python train_lfw.py --network {ckpt_path}")


if __name__ == "__main__":
    sys.exit(main())
