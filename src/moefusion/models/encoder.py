"""DenseFuse-style feature encoder (paper section 3.1, "the structure of encoders follows [16]")."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution with zero padding 1 (keeps H, W)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


class DenseBlock(nn.Module):
    """Dense block: layer ``i`` sees the concatenation of the block input and all earlier outputs.

    Args:
        in_channels: C_in of the block input.
        growth: channels each layer adds.
        num_layers: number of conv3x3 + ReLU layers.

    Shapes:
        input ``[B, C_in, H, W]`` -> ``(last [B, growth, H, W], dense [B, C_in + num_layers*growth, H, W])``
    """

    def __init__(self, in_channels: int, growth: int, num_layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(conv3x3(in_channels + i * growth, growth), nn.ReLU(inplace=True))
            for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return features[-1], torch.cat(features, dim=1)


class DenseEncoder(nn.Module):
    """Per-modality encoder: conv3x3 1->g + ReLU, then a dense block of three conv3x3 layers.

    With the default ``growth=16`` the dense layers are 16->16, 32->16, 48->16.

    Args:
        in_channels: channels of the input image.
        growth: g, the stem width and the dense growth rate.
        num_layers: dense layers.
        channels_last: switch the features to channels-last memory layout after the stem.
            Results are the same; on CPU the small-channel full-resolution convolutions of
            the whole fusion branch run about 1.5x faster in that layout (a 1-channel
            input cannot carry the layout, so it is set here).

    Shapes:
        input ``[B, in_channels, H, W]`` (a [0, 1] image) ->
        ``(x_enc [B, g, H, W], x_dense [B, 4g, H, W])``, ``x_enc`` being the last dense
        layer's output (the paper's feature map of the last layer) and ``x_dense`` the
        concatenation of the stem and the three dense outputs.
    """

    def __init__(
        self,
        in_channels: int = 1,
        growth: int = 16,
        num_layers: int = 3,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.stem = nn.Sequential(conv3x3(in_channels, growth), nn.ReLU(inplace=True))
        self.dense = DenseBlock(growth, growth, num_layers)
        self.out_channels = growth
        self.dense_channels = growth * (num_layers + 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.dense(x)
