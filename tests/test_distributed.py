"""Tests of train_lfw.py's data-parallel training on 2 CPU processes with Gloo.

Every process group uses the loopback interface: 127.0.0.1 with a free port,
and GLOO_SOCKET_IFNAME=lo. The end-to-end tests start this file under
torchrun (`python -m torch.distributed.run`). Run as a script, the file is a
training worker: it calls train_lfw.main and then saves the rank's flat
parameters and balancing decisions into $DIST_TEST_OUT/rank<R>.pt.
The gradient test starts 2 processes with torch.multiprocessing.spawn, which
meet through a file store.

NOTE: torchrun's rendezvous store (a PyTorch TCPStore) listens on all
interfaces at the chosen port, as `ss -ltn` shows during a run. Every
connection the tests make goes to 127.0.0.1.
"""

import copy
import csv
import itertools
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import data_lfw
import models
import optim_state
import train_lfw

REPO = Path(__file__).resolve().parents[1]
OUT_VARIABLE = "DIST_TEST_OUT"  # folder for the workers' rank<R>.pt files
FAIL_VARIABLE = "DIST_TEST_FAIL_RANK"  # rank whose real images turn NaN from batch 2 on
TINY = ["--gpu", "-1", "--scale", "32", "--ngf", "8", "--ndf", "4", "--noiseDim", "16",
        "--batchSize", "8", "--nval", "8", "--epochSize", "32", "--threads", "1",
        "--balance", "margin+l2"]
BATCHES = 8  # per epoch: --epochSize 32 / (--batchSize 8 / 2)

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with Gloo is not available",
)


# ---------------------------------------------------------------------------
# The torchrun worker


def run_worker(argv):
    """Train one rank with train_lfw.main, recording what the tests compare across ranks.

    Rank 1 shifts its parameters right after flattening them, so that equal
    parameters at the end show that rank 0's parameters were broadcast.
    """
    rank = int(os.environ["RANK"])
    flats, decisions, penalties = {}, [], []
    flatten = optim_state.flatten_parameters

    def flatten_and_shift(module):
        flat, grad = flatten(module)
        if rank > 0:
            flat.add_(0.01)
        flats[type(module).__name__] = flat
        return flat, grad

    def record_margin(err_R, err_F, sgdState_D, sgdState_G, margin=0.3):
        optim_state.balance_margin(err_R, err_F, sgdState_D, sgdState_G, margin)
        decisions.append([err_R, err_F, sgdState_D["optimize"], sgdState_G["optimize"]])

    def record_l2(err_G, sgdState_D):
        optim_state.balance_l2(err_G, sgdState_D)
        penalties.append([err_G, sgdState_D["coefL2"]])

    optim_state.flatten_parameters = flatten_and_shift
    train_lfw.balance_margin = record_margin
    train_lfw.balance_l2 = record_l2
    if os.environ.get(FAIL_VARIABLE) == str(rank):
        to_float = data_lfw.to_float
        calls = itertools.count(1)
        data_lfw.to_float = lambda x: to_float(x) * (math.nan if next(calls) >= 2 else 1.0)
    code = train_lfw.main(argv)
    torch.save({"D": flats.get("Discriminator"), "G": flats.get("Generator"),
                "decisions": decisions, "penalties": penalties},
               Path(os.environ[OUT_VARIABLE]) / f"rank{rank}.pt")
    return code


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, out, fail_rank=None):
    """Run this file as 2 torchrun workers on the loopback interface; return the process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               **{OUT_VARIABLE: str(out)})
    if fail_rank is not None:
        env[FAIL_VARIABLE] = str(fail_rank)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               __file__, *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          cwd=out)


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def two_rank_run(cache, tmp_path_factory):
    """Epoch 1 in one process, then epoch 2 in 2 torchrun ranks resumed from its checkpoint."""
    first = tmp_path_factory.mktemp("one_process") / "run"
    assert train_lfw.main([str(a) for a in TINY + ["--data", cache, "--epochs", 1,
                                                    "-s", first]]) == 0
    out = tmp_path_factory.mktemp("two_ranks")
    proc = torchrun(["--network", first / "adversarial.pt", "--epochs", 2, "-s", out / "run"],
                    out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dumps = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return out / "run", dumps, proc


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def flat_parameters(state, build):
    model = build()
    model.load_state_dict(state)
    return optim_state.flatten_parameters(model)[0]


# ---------------------------------------------------------------------------
# End-to-end runs under torchrun


def test_ranks_end_with_equal_parameters(two_rank_run):
    _, (rank0, rank1), _ = two_rank_run
    assert torch.equal(rank0["D"], rank1["D"])
    assert torch.equal(rank0["G"], rank1["G"])


def test_ranks_take_equal_balancing_decisions(two_rank_run):
    _, (rank0, rank1), _ = two_rank_run
    assert len(rank0["decisions"]) == BATCHES
    assert rank0["decisions"] == rank1["decisions"]
    assert len(rank0["penalties"]) == BATCHES
    assert rank0["penalties"] == rank1["penalties"]


def test_rank0_logs_averaged_errors(two_rank_run):
    run, (rank0, _), proc = two_rank_run
    rows = read_rows(run / "log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(BATCHES + 1, 2 * BATCHES + 1))
    for row, (err_R, err_F, optimize_D, optimize_G) in zip(rows, rank0["decisions"]):
        assert row["err_real"] == f"{err_R:.6f}"
        assert row["err_fake"] == f"{err_F:.6f}"
        assert row["optimize_D"] == str(int(optimize_D))
        assert row["optimize_G"] == str(int(optimize_G))
    for row, (err_G, _) in zip(rows, rank0["penalties"]):
        assert row["err_gen"] == f"{err_G:.6f}"
    assert [r["epoch"] for r in read_rows(run / "epochs.csv")] == ["2"]
    # Only rank 0 prints the epoch summary.
    assert proc.stdout.count("<trainer> epoch 2:") == 1


def test_checkpoint_contains_rank0_parameters(two_rank_run):
    run, (rank0, _), _ = two_rank_run
    ckpt = torch.load(run / "adversarial.pt", weights_only=True)
    assert ckpt["epoch"] == 3
    assert ckpt["sgdState_D"]["numUpdates"] == 2 * BATCHES
    D = flat_parameters(ckpt["D"], lambda: models.build_discriminator(32, 4))
    G = flat_parameters(ckpt["G"], lambda: models.build_generator(16, 32, 8))
    assert torch.equal(D, rank0["D"])
    assert torch.equal(G, rank0["G"])


def test_two_rank_checkpoint_resumes_in_one_process(two_rank_run, tmp_path):
    run = Path(shutil.copytree(two_rank_run[0], tmp_path / "run"))
    assert train_lfw.main(["--network", str(run / "adversarial.pt"), "--epochs", "3"]) == 0
    rows = read_rows(run / "log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(BATCHES + 1, 3 * BATCHES + 1))
    assert [r["epoch"] for r in read_rows(run / "epochs.csv")] == ["2", "3"]
    ckpt = torch.load(run / "adversarial.pt", weights_only=True)
    assert ckpt["epoch"] == 4
    assert ckpt["sgdState_D"]["numUpdates"] == 3 * BATCHES


def test_failing_rank_stops_job_naming_rank(cache, tmp_path):
    proc = torchrun(TINY + ["--data", cache, "--epochs", 1, "-s", tmp_path / "run"], tmp_path,
                    fail_rank=1)
    assert proc.returncode != 0
    assert "rank 1: error: D's output is nan at epoch 1, batch 2" in proc.stderr
    assert not (tmp_path / "run" / "adversarial.pt").exists()


# ---------------------------------------------------------------------------
# The averaged gradient equals the single-process gradient


def gradient_worker(rank, world_size, out):
    """Compute D's and G's gradients on a fixed global batch, here and averaged over ranks.

    Dropout is off and G's batch norm uses its running statistics (eval
    mode), so the gradient on the whole batch is the mean of the ranks'.
    The ranks meet through a file store in `out`, so only Gloo opens sockets.
    """
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    ranks = train_lfw.Ranks(rank, world_size, rank, distributed=True)
    ranks.join(torch.device("cpu"), init_method=f"file://{Path(out) / 'store'}")
    torch.manual_seed(0)
    model_D = models.build_discriminator(32, 4).eval()
    model_G = models.build_generator(16, 32, 8).eval()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    noise_D, noise_G = torch.randn(4, 16), torch.randn(8, 16)
    targets = torch.cat([torch.ones(4, 1), torch.zeros(4, 1)])

    # One process on the whole batch.
    single_D, single_G = copy.deepcopy(model_D), copy.deepcopy(model_G)
    _, single_grad_D = optim_state.flatten_parameters(single_D)
    _, single_grad_G = optim_state.flatten_parameters(single_G)
    with torch.no_grad():
        fake = single_G(noise_D)
    outputs = single_D(torch.cat([real, fake]))
    single_errors = [F.binary_cross_entropy(outputs[:4], targets[:4]).item(),
                     F.binary_cross_entropy(outputs[4:], targets[4:]).item()]
    F.binary_cross_entropy(outputs, targets).backward()
    single_D.requires_grad_(False)
    F.binary_cross_entropy(single_D(single_G(noise_G)), torch.ones(8, 1)).backward()

    # This rank's contiguous share, through train_lfw's gradient path.
    _, grad_D = optim_state.flatten_parameters(model_D)
    _, grad_G = optim_state.flatten_parameters(model_G)
    parallel_D = train_lfw.wrap_data_parallel(model_D, torch.device("cpu"), ranks)
    parallel_G = train_lfw.wrap_data_parallel(model_G, torch.device("cpu"), ranks)
    share = slice(2 * rank, 2 * rank + 2)
    outputs = parallel_D(torch.cat([real[share], fake[share]]))
    share_targets = torch.cat([torch.ones(2, 1), torch.zeros(2, 1)])
    errors = ranks.mean([F.binary_cross_entropy(outputs[:2], share_targets[:2]).item(),
                         F.binary_cross_entropy(outputs[2:], share_targets[2:]).item()])
    F.binary_cross_entropy(outputs, share_targets).backward()
    model_D.requires_grad_(False)
    noise_share = noise_G[4 * rank : 4 * rank + 4]
    F.binary_cross_entropy(model_D(parallel_G(noise_share)), torch.ones(4, 1)).backward()
    model_D.requires_grad_(True)

    def grads_are_views(model, flat_grad):
        storage = flat_grad.untyped_storage().data_ptr()
        return all(p.grad.untyped_storage().data_ptr() == storage for p in model.parameters())

    torch.save({"grad_D": grad_D, "grad_G": grad_G, "errors": errors,
                "single_grad_D": single_grad_D, "single_grad_G": single_grad_G,
                "single_errors": single_errors,
                "views": [grads_are_views(model_D, grad_D), grads_are_views(model_G, grad_G)]},
               Path(out) / f"rank{rank}.pt")
    ranks.leave()


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradients")
    mp.spawn(gradient_worker, args=(2, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_averaged_gradient_equals_single_process(gradients):
    for rank, result in enumerate(gradients):
        for net in ("D", "G"):
            single = result[f"single_grad_{net}"]
            assert single.abs().max() > 0, f"rank {rank}: {net}'s gradient is zero"
            torch.testing.assert_close(result[f"grad_{net}"], single, rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"rank {rank}, {net}: {m}")


def test_averaged_errors_equal_single_process(gradients):
    for result in gradients:
        assert result["errors"] == pytest.approx(result["single_errors"], rel=1e-6)


def test_gradients_stay_flat_views_under_ddp(gradients):
    for result in gradients:
        assert result["views"] == [True, True]


# ---------------------------------------------------------------------------
# Options, environment and signals


def test_batch_size_must_divide_by_twice_ranks():
    opt, _ = train_lfw.parse_options(TINY + ["--batchSize", "6"])
    train_lfw.validate_options(opt, world_size=1)
    with pytest.raises(train_lfw.TrainingError, match="--batchSize 6 for 2 ranks") as info:
        train_lfw.validate_options(opt, world_size=2)
    assert "multiple of 4" in str(info.value)


def test_rank_shares_make_up_single_process_batch():
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    single = train_lfw.Ranks()
    for world_size in (2, 4):
        ranks = [train_lfw.Ranks(r, world_size, r, distributed=True) for r in range(world_size)]
        for batch in (1, 2, 5):
            expected = train_lfw.rank_share(order, batch, 8, single)
            shares = [train_lfw.rank_share(order, batch, 8, r) for r in ranks]
            assert all(len(share) == 8 // world_size for share in shares)
            assert torch.equal(torch.cat(shares), expected)


def test_environment_outside_torchrun_is_single_process():
    assert train_lfw.ranks_from_environment({}) is None


def test_environment_of_torchrun_worker():
    ranks = train_lfw.ranks_from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank) == (3, 4, 1)
    assert ranks.distributed
    assert not ranks.is_main
    assert not ranks.is_local_main


@pytest.mark.parametrize("environ, message", [
    ({"RANK": "0"}, "WORLD_SIZE, LOCAL_RANK missing"),
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "invalid RANK='x'"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK=2, WORLD_SIZE=2"),
])
def test_environment_rejects_invalid_values(environ, message):
    with pytest.raises(train_lfw.TrainingError, match=message):
        train_lfw.ranks_from_environment(environ)


def test_sync_batchnorm_rejected_on_cpu():
    opt, _ = train_lfw.parse_options(TINY + ["--syncBN"])
    model = models.build_generator(16, 32, 8)
    ranks = train_lfw.Ranks(0, 2, 0, distributed=True)
    with pytest.raises(train_lfw.TrainingError, match="--no-syncBN"):
        train_lfw.convert_sync_batchnorm(model, opt, torch.device("cpu"), ranks)
    single_process = train_lfw.Ranks()
    converted = train_lfw.convert_sync_batchnorm(model, opt, torch.device("cpu"), single_process)
    assert converted is model


def test_second_signal_ignored_under_torchrun():
    ranks = train_lfw.Ranks(1, 2, 1, distributed=True)
    with train_lfw.StopRequest(ranks) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == signal.SIGINT


if __name__ == "__main__":
    sys.exit(run_worker(sys.argv[1:]))
