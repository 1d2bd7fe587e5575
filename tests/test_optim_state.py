"""Tests of the flat-vector optimizers and the balancing rules."""

import math

import pytest
import torch
import torch.nn as nn

import optim_state
from optim_state import balance_l2, balance_margin, new_sgd_state


def constant_grad(grad, loss=1.5):
    """Return an opfunc whose gradient is `grad` at any x."""
    grad = torch.tensor(grad, dtype=torch.float64)
    return lambda x: (loss, grad.clone())


def test_rmsprop_first_step_uses_lr_over_50():
    config = new_sgd_state(0.5)
    x = torch.zeros(2, dtype=torch.float64)
    optim_state.rmsprop(constant_grad([1.0, -2.0]), x, config)
    # m = 0.1 g^2, so g / sqrt(m) = sign(g) / sqrt(0.1); step = 0.5/50 * that.
    expected = -0.01 / math.sqrt(0.1)
    assert x[0].item() == pytest.approx(expected, rel=1e-6)
    assert x[1].item() == pytest.approx(-expected, rel=1e-6)
    assert config["numUpdates"] == 1


@pytest.mark.parametrize(
    "num_updates, divisor", [(0, 50), (9, 50), (10, 5), (29, 5), (30, 1), (1000, 1)]
)
def test_rmsprop_warmup_divisor(num_updates, divisor):
    config = new_sgd_state(0.5)
    config["numUpdates"] = num_updates
    x = torch.zeros(1, dtype=torch.float64)
    optim_state.rmsprop(constant_grad([1.0]), x, config)
    assert x.item() == pytest.approx(-0.5 / divisor / math.sqrt(0.1), rel=1e-6)


def test_rmsprop_second_step_accumulates_mean_square():
    config = new_sgd_state(0.5)
    x = torch.zeros(1, dtype=torch.float64)
    optim_state.rmsprop(constant_grad([1.0]), x, config)
    optim_state.rmsprop(constant_grad([3.0]), x, config)
    m = 0.9 * 0.1 + 0.1 * 9.0
    expected = -0.01 / math.sqrt(0.1) - 0.01 * 3.0 / math.sqrt(m)
    assert x.item() == pytest.approx(expected, rel=1e-6)
    assert config["m"].item() == pytest.approx(m)


@pytest.mark.parametrize("method", ["rmsprop", "adam", "sgd"])
def test_skipped_update_leaves_x_and_counts_call(method):
    config = new_sgd_state(0.5)
    config["optimize"] = False
    x = torch.ones(3, dtype=torch.float64)
    _, (f,) = optim_state.OPTIMIZERS[method](constant_grad([1.0, 2.0, 3.0]), x, config)
    assert torch.equal(x, torch.ones(3, dtype=torch.float64))
    assert config["numUpdates"] == 1
    assert f == 1.5


def test_skipped_update_creates_no_buffers():
    config = new_sgd_state(0.5)
    config["optimize"] = False
    optim_state.rmsprop(constant_grad([1.0]), torch.zeros(1, dtype=torch.float64), config)
    assert "m" not in config


def test_skipped_calls_advance_warmup():
    config = new_sgd_state(0.5)
    config["optimize"] = False
    x = torch.zeros(1, dtype=torch.float64)
    for _ in range(10):
        optim_state.rmsprop(constant_grad([1.0]), x, config)
    config["optimize"] = True
    optim_state.rmsprop(constant_grad([1.0]), x, config)
    assert x.item() == pytest.approx(-0.1 / math.sqrt(0.1), rel=1e-6)


def test_rmsprop_state_argument_holds_buffers():
    config, state = new_sgd_state(0.5), {}
    optim_state.rmsprop(constant_grad([1.0]), torch.zeros(1, dtype=torch.float64), config, state)
    assert "m" in state
    assert "m" not in config


def test_adam_first_step_size():
    config = new_sgd_state(0.5)
    x = torch.zeros(2, dtype=torch.float64)
    optim_state.adam(constant_grad([4.0, -0.25]), x, config)
    # After bias correction m_hat = g and v_hat = g^2, so the step is lr/50 * sign(g).
    assert x[0].item() == pytest.approx(-0.01, rel=1e-5)
    assert x[1].item() == pytest.approx(0.01, rel=1e-5)
    assert config["t"] == 1


def test_adam_counter_advances_only_on_updates():
    config = new_sgd_state(0.5)
    x = torch.zeros(1, dtype=torch.float64)
    optim_state.adam(constant_grad([1.0]), x, config)
    config["optimize"] = False
    optim_state.adam(constant_grad([1.0]), x, config)
    assert config["t"] == 1
    assert config["numUpdates"] == 2


def test_sgd_plain_step():
    config = new_sgd_state(0.1)
    x = torch.ones(2, dtype=torch.float64)
    optim_state.sgd(constant_grad([1.0, -2.0]), x, config)
    assert x.tolist() == pytest.approx([0.9, 1.2])


def test_sgd_momentum_with_torch_dampening():
    config = new_sgd_state(0.1, momentum=0.5)
    x = torch.zeros(1, dtype=torch.float64)
    optim_state.sgd(constant_grad([1.0]), x, config)  # buffer = g = 1
    optim_state.sgd(constant_grad([3.0]), x, config)  # buffer = 0.5*1 + (1-0.5)*3 = 2
    assert x.item() == pytest.approx(-0.1 * 1.0 - 0.1 * 2.0)


def test_sgd_has_no_warmup():
    config = new_sgd_state(0.1)
    x = torch.zeros(1, dtype=torch.float64)
    optim_state.sgd(constant_grad([1.0]), x, config)
    assert x.item() == pytest.approx(-0.1)


def test_flatten_parameters_views_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    inputs = torch.randn(5, 3)
    before = net(inputs).detach()
    flat, flat_grad = optim_state.flatten_parameters(net)
    assert flat.numel() == 3 * 4 + 4 + 4 * 2 + 2
    torch.testing.assert_close(net(inputs), before)
    flat.zero_()
    assert net(inputs).abs().max() == 0


def test_flatten_parameters_collects_gradients():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    _, flat_grad = optim_state.flatten_parameters(net)
    net(torch.ones(1, 3)).sum().backward()
    # d(sum(Wx + b))/dW = x = 1 for every weight, and 1 for every bias.
    assert flat_grad.tolist() == [1.0] * 8
    flat_grad.zero_()
    net(torch.ones(1, 3)).sum().backward()
    assert flat_grad.tolist() == [1.0] * 8


def test_add_penalties_values():
    x = torch.tensor([1.0, -2.0])
    grad = torch.zeros(2)
    f = optim_state.add_penalties(0.5, x, grad, coef_l1=0.1, coef_l2=0.01)
    assert f == pytest.approx(0.5 + 0.1 * 3.0 + 0.01 * 5.0 / 2)
    assert grad.tolist() == pytest.approx([0.1 + 0.01, -0.1 - 0.02])


MARGIN_CASES = [
    # err_R, err_F, optimize_D, optimize_G
    (0.5, 0.5, True, True),  # balanced: both learn
    (0.2, 0.5, False, True),  # D accepts reals too well: skip D
    (0.5, 0.29, False, True),  # D spots fakes too well: skip D
    (0.8, 0.5, True, False),  # D rejects reals: skip G
    (0.5, 0.71, True, False),  # D is fooled by fakes: skip G
    (0.2, 0.8, True, True),  # both would be skipped: update both
    (0.3, 0.7, True, True),  # exactly at the margins: neither is skipped
]


@pytest.mark.parametrize("err_R, err_F, optimize_D, optimize_G", MARGIN_CASES)
def test_balance_margin_table(err_R, err_F, optimize_D, optimize_G):
    state_D, state_G = new_sgd_state(1e-3), new_sgd_state(1e-3)
    state_D["optimize"] = state_G["optimize"] = None
    balance_margin(err_R, err_F, state_D, state_G, margin=0.3)
    assert state_D["optimize"] is optimize_D
    assert state_G["optimize"] is optimize_G


L2_CASES = [
    # err_G, coefL2 before, coefL2 after
    (1.5, 0.0, 1e-5),  # D wins: penalise it more
    (1.31, 2e-5, 3e-5),
    (1.3, 2e-5, 2e-5),  # at the bound: unchanged
    (1.0, 2e-5, 2e-5),  # in the band: unchanged
    (0.9, 2e-5, 2e-5),
    (0.5, 2e-5, 1e-5),  # G wins: penalise D less
    (0.5, 0.0, 0.0),  # never below 0
    (0.5, 4e-6, 0.0),
]


@pytest.mark.parametrize("err_G, before, after", L2_CASES)
def test_balance_l2_table(err_G, before, after):
    state_D = new_sgd_state(1e-3, coef_l2=before)
    balance_l2(err_G, state_D)
    assert state_D["coefL2"] == pytest.approx(after, abs=1e-12)
