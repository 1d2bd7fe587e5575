"""Tests of the generator and discriminator architectures."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models


def test_generator_parameter_count_matches_lua():
    # Linear 512->128*8*8, convs 128->256, 256->256, 256->128 (5x5), 128->3 (3x3),
    # three batch norms, counted by hand from train_lfw.lua.
    expected = (512 * 8192 + 8192) + (128 * 256 * 25 + 256) + (256 * 256 * 25 + 256) \
        + (256 * 128 * 25 + 128) + (128 * 3 * 9 + 3) + 2 * (256 + 256 + 128)
    assert expected == 7_484_675
    assert models.count_parameters(models.build_generator()) == expected


def test_discriminator_parameter_count_matches_lua():
    expected = (3 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (64 * 96 * 25 + 96) \
        + (8 * 8 * 96 * 1024 + 1024) + (1024 + 1)
    assert expected == 6_500_897
    assert models.count_parameters(models.build_discriminator()) == expected


def test_discriminator_batch_norm_adds_affine_parameters():
    plain = models.count_parameters(models.build_discriminator())
    with_bn = models.count_parameters(models.build_discriminator(batch_norm=True))
    assert with_bn - plain == 2 * (32 + 64 + 96)


@pytest.mark.parametrize("scale", [32, 64])
def test_generator_output_shape(scale):
    G = models.build_generator(noise_dim=16, scale=scale, ngf=8)
    assert G(torch.randn(3, 16)).shape == (3, 3, scale, scale)


@pytest.mark.parametrize("scale", [32, 64])
def test_discriminator_outputs_probabilities(scale):
    D = models.build_discriminator(scale=scale, ndf=4)
    out = D(torch.randn(5, 3, scale, scale))
    assert out.shape == (5, 1)
    assert ((out > 0) & (out < 1)).all()


def test_generator_scale32_drops_middle_convolution():
    convs = [m for m in models.build_generator(scale=32, ngf=8).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 8, 3]


@pytest.mark.parametrize("scale", [16, 48, 128])
def test_invalid_scale_is_rejected(scale):
    with pytest.raises(ValueError, match="invalid scale"):
        models.build_generator(scale=scale)
    with pytest.raises(ValueError, match="invalid scale"):
        models.build_discriminator(scale=scale)


def test_torch7_init_bounds():
    torch.manual_seed(0)
    G = models.build_generator(noise_dim=16, scale=32, ngf=8)
    conv = G.body[1]
    bound = 1 / math.sqrt(8 * 5 * 5)
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound
    assert conv.bias.abs().max() <= bound
    bn = G.body[2]
    assert (bn.weight >= 0).all()
    assert (bn.weight <= 1).all()
    assert (bn.bias == 0).all()


def test_upsample_conv5x5_equals_plain_layers():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 5, padding=2)
    x = torch.randn(2, 6, 7, 9)
    expected = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    actual = models.upsample_conv5x5(x, conv)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_upsample_conv5x5_gradients_equal_plain_layers():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 5, padding=2)
    x = torch.randn(2, 4, 6, 6)
    conv(F.interpolate(x, scale_factor=2, mode="nearest")).square().sum().backward()
    expected = conv.weight.grad.clone(), conv.bias.grad.clone()
    conv.zero_grad()
    models.upsample_conv5x5(x, conv).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad, expected[1], rtol=1e-4, atol=1e-4)


def test_generator_phase_upsample_matches_plain_generator():
    torch.manual_seed(0)
    G = models.build_generator(noise_dim=16, scale=64, ngf=8).eval()
    z = torch.randn(4, 16)
    fast = G(z)
    G.phase_upsample = False
    torch.testing.assert_close(fast, G(z), rtol=1e-4, atol=1e-5)


def test_phase_upsample_keeps_state_dict_keys():
    fast = models.build_generator(noise_dim=16, scale=32, ngf=8)
    plain = models.build_generator(noise_dim=16, scale=32, ngf=8, phase_upsample=False)
    assert fast.state_dict().keys() == plain.state_dict().keys()
