"""The Base checkpoints' speaker encoder: ECAPA-TDNN without BatchNorm, log-mel frames -> one x-vector.

The x-vector has the talker's width and is used as-is as the speaker position of the prompt. Parameter
names equal the checkpoint's `speaker_encoder.*` keys without the prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import SpeakerEncoderConfig
from ..errors import CheckpointError

STD_FLOOR = 1e-12  # variance floor of the pooling statistics


def _conv(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
          device=None, dtype=None) -> nn.Conv1d:
    # Every convolution of the network keeps its length by reflecting the edges, not by zero padding.
    return nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding="same",
                     padding_mode="reflect", device=device, dtype=dtype)


class TimeDelayLayer(nn.Module):
    """A dilated 1-D convolution followed by ReLU (ECAPA's "TDNN" block, here without BatchNorm)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 device=None, dtype=None):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel_size, dilation, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Res2Net(nn.Module):
    """Split channels into `scale` groups; group 0 passes, each later group is convolved after adding the
    previous group's output, so receptive fields grow group by group."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int, device=None, dtype=None):
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(
            TimeDelayLayer(width, width, kernel_size, dilation, device, dtype) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(x, self.scale, dim=1)
        outputs = [groups[0]]
        previous = None
        for group, block in zip(groups[1:], self.blocks):
            previous = block(group if previous is None else group + previous)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Rescale channels by a gate computed from their mean over time."""

    def __init__(self, channels: int, bottleneck: int, device=None, dtype=None):
        super().__init__()
        self.conv1 = _conv(channels, bottleneck, device=device, dtype=dtype)
        self.conv2 = _conv(bottleneck, channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.relu(self.conv1(x.mean(dim=2, keepdim=True)))
        return x * torch.sigmoid(self.conv2(gate))


class SERes2NetBlock(nn.Module):
    """1x1 TDNN -> Res2Net -> 1x1 TDNN -> squeeze-excitation, plus the input (residual)."""

    def __init__(self, in_channels: int, channels: int, scale: int, se_channels: int, kernel_size: int,
                 dilation: int, device=None, dtype=None):
        super().__init__()
        self.tdnn1 = TimeDelayLayer(in_channels, channels, device=device, dtype=dtype)
        self.res2net_block = Res2Net(channels, scale, kernel_size, dilation, device, dtype)
        self.tdnn2 = TimeDelayLayer(channels, channels, device=device, dtype=dtype)
        self.se_block = SqueezeExcitation(channels, se_channels, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x))))


def weighted_statistics(x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over time of `x` [batch, channels, time] under `weights` summing to 1."""
    mean = (weights * x).sum(dim=2)
    variance = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, torch.sqrt(variance.clamp(min=STD_FLOOR))


class AttentiveStatisticsPooling(nn.Module):
    """Per-channel attention over time, conditioned on the utterance's global mean and std; returns the
    attention-weighted mean and std concatenated [batch, 2 * channels]."""

    def __init__(self, channels: int, attention_channels: int, device=None, dtype=None):
        super().__init__()
        self.tdnn = TimeDelayLayer(3 * channels, attention_channels, device=device, dtype=dtype)
        self.conv = _conv(attention_channels, channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        # Uniform weights (rather than .mean()) keep the arithmetic identical to the attentive pass below.
        uniform = torch.full_like(x[:, :1], 1.0 / frames)
        mean, std = weighted_statistics(x, uniform)
        context = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        attention = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)
        mean, std = weighted_statistics(x, attention)
        return torch.cat([mean, std], dim=1)


class SpeakerEncoder(nn.Module):
    """Log-mel frames [batch, frames, mel_dim] -> speaker x-vector [batch, enc_dim].

    All items of a batch must have the same number of frames (there is no padding mask).
    """

    def __init__(self, config: SpeakerEncoderConfig, device=None, dtype=None):
        super().__init__()
        channels, kernels, dilations = config.enc_channels, config.enc_kernel_sizes, config.enc_dilations
        if not len(channels) == len(kernels) == len(dilations) or len(channels) < 3:
            raise CheckpointError(
                "speaker_encoder_config: enc_channels, enc_kernel_sizes and enc_dilations must have the same "
                f"length (at least 3), got {len(channels)}, {len(kernels)}, {len(dilations)}"
            )
        first = TimeDelayLayer(config.mel_dim, channels[0], kernels[0], dilations[0], device, dtype)
        residual_blocks = [
            SERes2NetBlock(channels[i - 1], channels[i], config.enc_res2net_scale, config.enc_se_channels,
                           kernels[i], dilations[i], device, dtype)
            for i in range(1, len(channels) - 1)
        ]
        self.blocks = nn.ModuleList([first, *residual_blocks])
        # Multi-layer feature aggregation over the concatenated residual-block outputs.
        self.mfa = TimeDelayLayer(channels[-1], channels[-1], kernels[-1], dilations[-1], device, dtype)
        self.asp = AttentiveStatisticsPooling(channels[-1], config.enc_attention_channels, device, dtype)
        self.fc = _conv(2 * channels[-1], config.enc_dim, device=device, dtype=dtype)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](mels.transpose(1, 2))
        block_outputs = []
        for block in self.blocks[1:]:
            x = block(x)
            block_outputs.append(x)
        pooled = self.asp(self.mfa(torch.cat(block_outputs, dim=1)))
        return self.fc(pooled.unsqueeze(2)).squeeze(2)
