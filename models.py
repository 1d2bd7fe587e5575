"""Generator and discriminator of torch-gan, ported from Torch7.

The layers, their order and the initialisation follow `train_lfw.lua`:
at the defaults G has 7,484,675 parameters and D 6,500,897, as in the Lua.
Nothing is read or written here.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VALID_SCALES = (32, 64)

# Tap maps from the rows of a 5x5 kernel to the three rows of a 3x3 kernel on
# the low-resolution input, after 2x nearest upsampling, for output rows of
# even (0) and odd (1) phase. Row 0 of the even phase, for example, sums
# kernel rows 0 and 1, because both read copies of the same input row.
_PHASE_TAPS = torch.tensor(
    [
        [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]],
        [[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]],
    ],
    dtype=torch.float32,
)


def upsample_conv5x5(x, conv):
    """Compute `conv(upsample_nearest_2x(x))` for a 5x5, padding-2 `conv`, faster.

    Each of the four output phases (even/odd row, even/odd column) is a 3x3
    convolution of the low-resolution input whose kernel sums taps of the
    5x5 kernel. All four run as one convolution with 4x the output channels,
    and `pixel_shuffle` interleaves them: 36 instead of 100 multiply-adds
    per input channel and 2x2 output block. The result equals the plain
    layers up to float rounding, and gradients reach `conv.weight` as usual.
    """
    weight = conv.weight  # (out, in, 5, 5)
    taps = _PHASE_TAPS.to(weight)
    out_channels, in_channels = weight.shape[:2]
    # kernel[o, a, b] = taps[a] @ weight[o] @ taps[b].T, one 3x3 kernel per phase (a, b)
    kernel = torch.einsum("ayk,oikl,bxl->oabiyx", taps, weight, taps)
    kernel = kernel.reshape(out_channels * 4, in_channels, 3, 3)
    bias = conv.bias.repeat_interleave(4)
    out = F.conv2d(x, kernel, bias, padding=1)  # (N, 4*out, H, W)
    return F.pixel_shuffle(out, 2)  # (N, out, 2H, 2W)


def _doublings(scale):
    """Return how many 2x upsamplings take the 8x8 seed of G to `scale`."""
    if scale not in VALID_SCALES:
        raise ValueError(f"invalid scale {scale}: use one of {VALID_SCALES}")
    return int(math.log2(scale // 8))


def _generator_channels(ngf, doublings):
    """Return the output channels of G's upsampling convolutions.

    At scale 64 the Lua uses 2*ngf, 2*ngf, ngf. At scale 32 the middle
    2*ngf -> 2*ngf convolution is dropped.
    """
    if doublings == 3:
        return [2 * ngf, 2 * ngf, ngf]
    return [2 * ngf, ngf]


class Generator(nn.Module):
    """G: noise (N, noise_dim) -> images (N, 3, scale, scale), unbounded.

    The Lua clips samples with HardTanh only when plotting, so D is trained
    on the raw convolution output. `train_lfw.py` does the same.
    With `phase_upsample` (the default) each upsampling and the convolution
    after it run as `upsample_conv5x5`. The layers and parameters stay the
    plain ones, so checkpoints do not depend on the flag.
    """

    def __init__(self, noise_dim=512, scale=64, ngf=128, phase_upsample=True):
        super().__init__()
        self.noise_dim = noise_dim
        self.ngf = ngf
        self.phase_upsample = phase_upsample
        self.linear = nn.Linear(noise_dim, ngf * 8 * 8)
        layers = []
        in_channels = ngf
        for out_channels in _generator_channels(ngf, _doublings(scale)):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(in_channels, out_channels, 5, padding=2),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        layers.append(nn.Conv2d(in_channels, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z):
        x = self.linear(z).view(-1, self.ngf, 8, 8)  # (N, ngf, 8, 8)
        x = torch.relu(x)
        if not self.phase_upsample:
            return self.body(x)  # (N, 3, scale, scale)
        layers = iter(self.body)
        for layer in layers:
            if isinstance(layer, nn.Upsample):
                x = upsample_conv5x5(x, next(layers))  # (N, C, 2H, 2W)
            else:
                x = layer(x)
        return x  # (N, 3, scale, scale)


class Discriminator(nn.Module):
    """D: images (N, 3, scale, scale) -> probability of being real, (N, 1).

    Three 5x5 convolutions, each halving the size by 2x2 max pooling, with
    ReLU and spatial dropout 0.2, then a dense layer of 32*ndf units with
    dropout 0.5. `batch_norm=True` puts batch norm after each convolution.
    """

    def __init__(self, scale=64, ndf=32, batch_norm=False):
        super().__init__()
        _doublings(scale)
        layers = []
        in_channels = 3
        for out_channels in (ndf, 2 * ndf, 3 * ndf):
            layers.append(nn.Conv2d(in_channels, out_channels, 5, padding=2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            # The Lua pools before the ReLU in the first two blocks and after it
            # in the third. Max pooling commutes with ReLU, so one order serves all.
            layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True), nn.Dropout2d(0.2)]
            in_channels = out_channels
        side = scale // 8
        layers += [
            nn.Flatten(),  # (N, 3*ndf * side * side)
            nn.Linear(3 * ndf * side * side, 32 * ndf),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(32 * ndf, 1),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        # The sigmoid runs in float32 even under bf16 autocast, so that the
        # binary cross entropy of outputs near 0 or 1 keeps its precision.
        return torch.sigmoid(self.body(x).float())


def torch7_init_(module):
    """Initialise weights as Torch7's `nn` did in 2015, in place.

    Linear and convolution layers: weight and bias uniform in
    [-1/sqrt(fan_in), 1/sqrt(fan_in)]. Batch norm: weight uniform in [0, 1],
    bias 0, which is what `nn.BatchNormalization:reset()` did then.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.uniform_(m.bias, -bound, bound)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)
    return module


def build_generator(noise_dim=512, scale=64, ngf=128, phase_upsample=True):
    """Build G with Torch7 initialisation."""
    return torch7_init_(Generator(noise_dim, scale, ngf, phase_upsample))


def build_discriminator(scale=64, ndf=32, batch_norm=False):
    """Build D with Torch7 initialisation."""
    return torch7_init_(Discriminator(scale, ndf, batch_norm))


def count_parameters(module):
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
