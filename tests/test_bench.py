"""Tests of bench.py on tiny configurations: summary line, FLOP counts, baseline model."""

import re

import pytest
import torch

import bench
import models

TINY = ["--gpu", "-1", "--scale", "32", "--ngf", "8", "--ndf", "4", "--noiseDim", "16",
        "--batchSize", "8", "--threads", "1", "--steps", "2", "--warmup", "1",
        "--peakSize", "256"]
NUMBER = r"(nan|inf|[0-9]+(?:\.[0-9]+)?(?:e[+-][0-9]+)?)"
SUMMARY = re.compile(
    rf"^images_per_s={NUMBER} fraction_of_peak={NUMBER} speedup_vs_baseline={NUMBER}$"
)
CONV_OPS = ("aten.convolution", "aten.convolution_backward")


def summary_values(capsys):
    lines = capsys.readouterr().out.strip().splitlines()
    match = SUMMARY.match(lines[-1])
    assert match, f"last line does not match the summary format: {lines[-1]!r}"
    for text in match.groups():
        assert f"{float(text):.3g}" == text, f"{text} does not have 3 significant digits"
    return [float(text) for text in match.groups()]


def test_bench_tiny_prints_summary(capsys):
    assert bench.main(TINY) == 0
    images_per_s, fraction_of_peak, speedup = summary_values(capsys)
    assert images_per_s > 0
    assert 0 < fraction_of_peak < float("inf")
    assert 0 < speedup < float("inf")


def test_bench_without_baseline_and_peak(capsys):
    assert bench.main(TINY + ["--no-baseline", "--no-peak"]) == 0
    images_per_s, fraction_of_peak, speedup = summary_values(capsys)
    assert images_per_s > 0
    assert fraction_of_peak != fraction_of_peak  # nan
    assert speedup != speedup  # nan


@pytest.mark.parametrize("option", [["--epochs", "3"], ["--balance", "margin"]])
def test_bench_rejects_controlled_option(capsys, option):
    assert bench.main(TINY + option) == 2
    assert option[0] in capsys.readouterr().err


def test_bench_rejects_invalid_steps(capsys):
    assert bench.main(TINY + ["--steps", "0"]) == 2
    assert "--steps 0" in capsys.readouterr().err


def upsampling_layers(scale, ngf):
    """Return G's upsampling convolutions as (in channels, out channels, input side)."""
    if scale == 32:
        return [(ngf, 2 * ngf, 8), (2 * ngf, ngf, 16)]
    return [(ngf, 2 * ngf, 8), (2 * ngf, 2 * ngf, 16), (2 * ngf, ngf, 32)]


def generator_conv_macs(scale, ngf, phase_upsample):
    """Multiply-adds of G's convolutions for one image, forward."""
    macs = scale * scale * 3 * ngf * 9  # final 3x3 convolution to RGB
    for cin, cout, side in upsampling_layers(scale, ngf):
        if phase_upsample:
            macs += side * side * (4 * cout) * cin * 9  # four 3x3 phases at the input size
        else:
            macs += (2 * side) ** 2 * cout * cin * 25  # 5x5 at the upsampled size
    return macs


def discriminator_conv_macs(scale, ndf):
    """Multiply-adds of D's three 5x5 convolutions for one image, forward, as a list."""
    layers = [(3, ndf, scale), (ndf, 2 * ndf, scale // 2), (2 * ndf, 3 * ndf, scale // 4)]
    return [side * side * cout * cin * 25 for cin, cout, side in layers]


def expected_step_conv_flops(scale, ngf, ndf, batch, k, phase_upsample):
    """FLOPs of all convolutions in one training step, forward and backward.

    G runs forward without gradients on half a batch per D update, then forward and
    backward (input and weight gradients) on a full batch. D runs forward on a full
    batch per D update and in the G update. Its backward computes weight gradients and
    input gradients in each D update, except the input gradient of the first layer,
    whose input is data, and only input gradients in the G update, where D is frozen.
    """
    half = batch // 2
    g = generator_conv_macs(scale, ngf, phase_upsample)
    d_layers = discriminator_conv_macs(scale, ndf)
    d = sum(d_layers)
    g_macs = (k * half + 3 * batch) * g
    d_macs = batch * (k * (3 * d - d_layers[0]) + 2 * d)
    return 2 * (g_macs + d_macs)


@pytest.mark.parametrize("scale,k", [(32, 1), (64, 1), (32, 2)])
def test_step_flops_match_hand_count(scale, k):
    ngf, ndf, batch = 8, 4, 8
    for phase_upsample in (True, False):
        counts = bench.count_step_flops(16, scale, ngf, ndf, batch, phase_upsample, k=k)
        counted = sum(counts[op] for op in CONV_OPS)
        expected = expected_step_conv_flops(scale, ngf, ndf, batch, k, phase_upsample)
        assert counted == expected, f"phase_upsample={phase_upsample}"


def test_phase_upsampling_saves_expected_factor():
    scale, ngf, ndf, batch = 32, 8, 4, 8
    phase = bench.count_step_flops(16, scale, ngf, ndf, batch, phase_upsample=True)
    plain = bench.count_step_flops(16, scale, ngf, ndf, batch, phase_upsample=False)
    counted_ratio = sum(phase[op] for op in CONV_OPS) / sum(plain[op] for op in CONV_OPS)
    expected_ratio = expected_step_conv_flops(scale, ngf, ndf, batch, 1, True) / (
        expected_step_conv_flops(scale, ngf, ndf, batch, 1, False)
    )
    assert counted_ratio == pytest.approx(expected_ratio, rel=1e-12)
    # The upsampling convolutions alone cost 4 * 9 / (4 * 25) = 0.36 of the plain ones.
    upsampling = [generator_conv_macs(scale, ngf, p) - scale**2 * 3 * ngf * 9
                  for p in (True, False)]
    assert upsampling[0] / upsampling[1] == pytest.approx(0.36)
    assert sum(phase.values()) < sum(plain.values())
    # The phase-kernel einsum is the only extra operator, and it is small.
    assert set(phase) - set(plain) == {"aten.bmm"}
    assert phase["aten.bmm"] < 0.01 * sum(phase.values())


@pytest.mark.parametrize("train_mode", [True, False])
def test_baseline_generator_matches_project(train_mode):
    torch.manual_seed(0)
    project_g = models.build_generator(16, 32, 8)
    baseline_g, _ = bench.build_baseline_models(16, 32, 8, 4)
    assert project_g.phase_upsample
    assert not baseline_g.phase_upsample
    baseline_g.load_state_dict(project_g.state_dict())
    project_g.train(train_mode)
    baseline_g.train(train_mode)
    noise = torch.randn(8, 16)
    with torch.no_grad():
        expected = baseline_g(noise)
        actual = project_g(noise)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def write_log(path, times):
    lines = ["epoch,batch,time_s"] + [f"1,{i + 1},{t:.3f}" for i, t in enumerate(times)]
    path.write_text("\n".join(lines) + "\n")


def test_read_step_times_skips_warmup(tmp_path):
    log_csv = tmp_path / "log.csv"
    write_log(log_csv, [1.0, 1.5, 2.5, 3.0])
    assert bench.read_step_times(log_csv, 1) == pytest.approx([0.5, 1.0, 0.5])
    assert bench.read_step_times(log_csv, 0) == pytest.approx([1.0, 0.5, 1.0, 0.5])


def test_read_step_times_rejects_short_log(tmp_path):
    log_csv = tmp_path / "log.csv"
    write_log(log_csv, [1.0, 1.5])
    with pytest.raises(bench.BenchError, match="2 batches"):
        bench.read_step_times(log_csv, 2)
