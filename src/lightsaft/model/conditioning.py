"""Condition path: the dense control model that produces the GPoCM gates of the decoder."""

from __future__ import annotations

import torch
from torch import nn


def dense_control_mlp(embedding_dim: int, num_layers: int) -> nn.Sequential:
    """Widths ``E * 2**k``; every stage after the first adds Dropout(0.5) and BatchNorm1d.

    Built as one flat Sequential so its indices (0 Linear, 1 ReLU, 2 Linear, 3 ReLU,
    4 Dropout, 5 BN, ...) match the official weights.
    """
    stages: list[nn.Module] = []
    for k in range(1, num_layers):
        width = embedding_dim * 2**k
        stages += [nn.Linear(width // 2, width), nn.ReLU()]
        if k > 1:
            stages += [nn.Dropout(0.5), nn.BatchNorm1d(width)]
    return nn.Sequential(*stages)


class NormalizedLinear(nn.Module):
    """Linear -> affine-free BatchNorm1d over the batch axis (or no norm)."""

    def __init__(self, in_features: int, out_features: int, norm: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features, affine=False) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


class GPoCMControl(nn.Module):
    """Embedding -> MLP -> per-decoder-block gamma ``[B, C, C]`` and beta ``[B, C]``."""

    def __init__(self, embedding_dim: int, num_layers: int, channels: int, num_blocks: int, norm: bool):
        super().__init__()
        self.channels = channels
        self.num_blocks = num_blocks
        self.mlp = dense_control_mlp(embedding_dim, num_layers)
        hidden = embedding_dim * 2 ** (num_layers - 1)
        self.gamma = NormalizedLinear(hidden, num_blocks * channels * channels, norm)
        self.beta = NormalizedLinear(hidden, num_blocks * channels, norm)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns gammas ``[n, B, C, C]`` (indexed [input, output] channel) and betas ``[n, B, C]``."""
        hidden = self.mlp(embedding)
        c, n = self.channels, self.num_blocks
        gammas = self.gamma(hidden).view(-1, n, c, c).transpose(0, 1)
        betas = self.beta(hidden).view(-1, n, c).transpose(0, 1)
        return gammas, betas


def gpocm_gate(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Gated point-wise convolutional modulation: ``sigmoid(x . gamma + beta) * x``.

    ``p[b,j,t,f] = sum_i x[b,i,t,f] gamma[b,i,j] + beta[b,j]``: a per-item 1x1 convolution
    whose weights come from the condition, used as a gate on x rather than replacing it.
    """
    p = torch.baddbmm(beta[:, :, None], gamma.transpose(1, 2), x.flatten(2)).view_as(x)  # one fused bmm + bias
    return torch.sigmoid(p) * x
