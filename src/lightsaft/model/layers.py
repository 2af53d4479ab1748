"""Building blocks of the conditioned U-Net: TFC, the LightSAFT / LaSAFT frequency transforms.

Tensors are ``[B, C, T, F]`` (frequency last). Every BatchNorm here is a ``BatchNorm2d``
over the C channels, even after a Linear that acts on the frequency axis: that is how the
official network normalises, and the golden tensors depend on it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..schema import registry
from . import params

ACTIVATIONS = registry(
    params.ACTIVATIONS,
    relu=nn.ReLU,
    leaky_relu=nn.LeakyReLU,
    elu=nn.ELU,
    selu=nn.SELU,
    gelu=nn.GELU,
    tanh=nn.Tanh,
    sigmoid=nn.Sigmoid,
    identity=nn.Identity,
)


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class ConvBN(nn.Module):
    """Conv2d -> BatchNorm2d -> activation (``activation=None`` drops the activation)."""

    def __init__(self, conv: nn.Module, channels: int, act: str | None):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(channels)
        self.act = activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class LinearBN(nn.Module):
    """Linear on the frequency axis -> BatchNorm2d over channels -> activation."""

    def __init__(self, in_features: int, out_features: int, channels: int, bias: bool, act: str):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm2d(channels)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.linear(x)))


class TFC(nn.Module):
    """Densely connected convolutions; returns only the last layer's output.

    Layer k > 0 receives ``cat([output of layer k-1, input of layer k-1])`` (newest first).
    The official kernel tuple is ``(kernel_size_f, kernel_size_t)`` applied to the (T, F)
    axes; we keep that order so official weights load for non-square kernels too.

    ``channels_last`` runs the convolutions in the channels-last layout (and converts back for the
    frequency Linears that follow): same results, other speed. On CPU (oneDNN, torch 2.13) it makes
    the convolution forward ~1.5x faster but its backward ~2x slower: a training step at the seed
    config takes 1.3x longer, a forward without autograd ~10% less. Hence the default ``None``
    (auto): channels-last when autograd is off (separation, validation), not when training.
    ``True`` / ``False`` force it; whether ``True`` pays for training on a GPU (cuDNN's
    channels-last kernels under bf16/fp16 autocast) is what ``benchmarks/gpu_check.py`` measures.
    """

    def __init__(
        self, in_channels: int, channels: int, num_layers: int, kernel_size_t: int, kernel_size_f: int, act: str
    ):
        super().__init__()
        kernel = (kernel_size_f, kernel_size_t)
        padding = (kernel_size_f // 2, kernel_size_t // 2)
        self.layers = nn.ModuleList(
            ConvBN(nn.Conv2d(in_channels + k * channels, channels, kernel, padding=padding), channels, act)
            for k in range(num_layers)
        )
        self.channels_last: bool | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = not torch.is_grad_enabled() if self.channels_last is None else self.channels_last
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.layers[0](x)
        for layer in self.layers[1:]:
            x = torch.cat([out, x], dim=1)
            out = layer(x)
        return out.contiguous() if channels_last else out


class LatentSourceAttention(nn.Module):
    """Softmax attention of the condition embedding over K latent-source slots."""

    def __init__(self, embedding_dim: int, dk: int, num_tdfs: int):
        super().__init__()
        self.query = nn.Linear(embedding_dim, dk)
        self.keys = nn.Parameter(torch.empty(dk, num_tdfs))
        nn.init.xavier_normal_(self.keys)
        self.scale = 1.0 / math.sqrt(dk)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` -> attention weights ``[B, K]``."""
        return torch.softmax(self.query(embedding) @ self.keys * self.scale, dim=-1)


class LightSAFT(nn.Module):
    """Memory-efficient LaSAFT: attend over K latent sources in a small bottleneck.

    One Linear ``f -> K*nb`` yields K bottleneck codes (K is the major axis), the attention
    mixes them into one ``nb``-wide code, and ``LaSIFT`` (``nb -> f``) maps it back.
    """

    def __init__(
        self,
        channels: int,
        width: int,
        num_tdfs: int,
        bn_factor: int,
        min_bn_units: int,
        dk: int,
        embedding_dim: int,
        bias: bool,
        act: str,
    ):
        super().__init__()
        self.num_tdfs = num_tdfs
        self.bn_units = max(width // bn_factor, min_bn_units)
        self.bottleneck = LinearBN(width, self.bn_units * num_tdfs, channels, bias, act)
        self.attention = LatentSourceAttention(embedding_dim, dk, num_tdfs)
        self.expand = LinearBN(self.bn_units, width, channels, bias, act)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        codes = self.bottleneck(x).unflatten(-1, (self.num_tdfs, self.bn_units))  # [B, C, T, K, nb]
        weights = self.attention(embedding)  # [B, K]
        # A batched (1 x K) @ (K x nb) product over B*C*T, on views: 3x faster forward+backward on
        # CPU than einsum, which copies the codes to put K first.
        mixed = (weights[:, None, None, None, :] @ codes).squeeze(-2)  # [B, C, T, nb]
        return self.expand(mixed)


class LaSAFT(nn.Module):
    """The full LaSAFT: K frequency transforms (TDFs) at full width, mixed by attention.

    Its TDF output is viewed ``[B, C, T, f, K]`` (K is the minor axis, unlike LightSAFT).
    """

    def __init__(
        self,
        channels: int,
        width: int,
        num_tdfs: int,
        bn_factor: int,
        min_bn_units: int,
        dk: int,
        embedding_dim: int,
        bias: bool,
        act: str,
    ):
        super().__init__()
        self.num_tdfs = num_tdfs
        hidden = max(width * num_tdfs // bn_factor, min_bn_units)
        self.tdf = nn.Sequential(
            LinearBN(width, hidden, channels, bias, act),
            LinearBN(hidden, width * num_tdfs, channels, bias, act),
        )
        self.attention = LatentSourceAttention(embedding_dim, dk, num_tdfs)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        transforms = self.tdf(x).unflatten(-1, (-1, self.num_tdfs))  # [B, C, T, f, K]
        return torch.einsum("bctfk,bk->bctf", transforms, self.attention(embedding))


FREQUENCY_TRANSFORMS = registry(params.VARIANTS, lightsaft=LightSAFT, lasaft=LaSAFT)
