"""The conditioned U-Net (DCUN-TFC-GPoCM) and the separator that wraps it with the STFT."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..spectral import TARGETS, SpectralFrontEnd
from .conditioning import GPoCMControl, gpocm_gate
from .layers import FREQUENCY_TRANSFORMS, TFC, ConvBN, activation


class Block(nn.Module):
    """TFC -> (GPoCM gate, decoder only) -> x + frequency transform(x, embedding)."""

    def __init__(self, in_channels: int, width: int, p: dict, transform: type[nn.Module]):
        super().__init__()
        channels = p["internal_channels"]
        self.tfc = TFC(
            in_channels,
            channels,
            p["n_internal_layers"],
            p["kernel_size_t"],
            p["kernel_size_f"],
            p["tfc_tdf_activation"],
        )
        self.saft = transform(
            channels,
            width,
            p["num_tdfs"],
            p["bn_factor"],
            p["min_bn_units"],
            p["dk"],
            p["embedding_dim"],
            p["tfc_tdf_bias"],
            p["tfc_tdf_activation"],
        )

    def forward(
        self, x: torch.Tensor, embedding: torch.Tensor, gate: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = self.tfc(x)
        if gate is not None:
            x = gpocm_gate(x, *gate)
        return x + self.saft(x, embedding)


def _scales(layers: list[int] | None, n: int) -> list[int]:
    """Per level stride along one axis: 2 where the level downsamples (all when ``None``)."""
    chosen = range(n) if layers is None else layers
    return [2 if i in chosen else 1 for i in range(n)]


class ConditionedUNet(nn.Module):
    """``[B, 4, T, n_fft//2+1]`` spectrogram + condition index -> target spectrogram.

    ``p`` is the validated ``model`` section (official argument names). The 1x2 first/last
    convolutions map the ``n_fft//2 + 1`` bins to an even width ``n_fft//2`` and back.
    """

    def __init__(self, p: dict):
        super().__init__()
        c, n = p["internal_channels"], p["n_blocks"] // 2
        transform = FREQUENCY_TRANSFORMS[p["variant"]]
        t_scales, f_scales = _scales(p["t_down_layers"], n), _scales(p["f_down_layers"], n)
        widths = [p["n_fft"] // 2]
        for f_scale in f_scales:
            widths.append(widths[-1] // f_scale)

        self.embedding = nn.Embedding(p["control_input_dim"], p["embedding_dim"])
        self.control = GPoCMControl(p["embedding_dim"], p["control_n_layer"], c, n, norm=p["pocm_norm"] == "batch_norm")
        self.first_conv = ConvBN(nn.Conv2d(p["input_channels"], c, (1, 2)), c, p["first_conv_activation"])
        self.encoders = nn.ModuleList(Block(c, widths[i], p, transform) for i in range(n))
        self.downsamplings = nn.ModuleList(
            ConvBN(nn.Conv2d(c, c, (t, f), stride=(t, f)), c, None) for t, f in zip(t_scales, f_scales)
        )
        self.mid_block = Block(c, widths[n], p, transform)
        self.upsamplings = nn.ModuleList(
            ConvBN(nn.ConvTranspose2d(c, c, (t, f), stride=(t, f)), c, None)
            for t, f in zip(reversed(t_scales), reversed(f_scales))
        )
        self.decoders = nn.ModuleList(Block(2 * c, widths[n - 1 - i], p, transform) for i in range(n))
        self.last_conv = nn.Sequential(
            nn.Conv2d(c, p["input_channels"], (1, 2), padding=(0, 1)), activation(p["last_activation"])
        )

    def forward(self, spec: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding(condition)
        gammas, betas = self.control(embedding)
        x = self.first_conv(spec)
        skips = []
        for encoder, down in zip(self.encoders, self.downsamplings):
            x = encoder(x, embedding)
            skips.append(x)
            x = down(x)
        x = self.mid_block(x, embedding)
        for i, (up, decoder) in enumerate(zip(self.upsamplings, self.decoders)):
            x = torch.cat([up(x), skips[-1 - i]], dim=1)
            x = decoder(x, embedding, gate=(gammas[i], betas[i]))
        return self.last_conv(x)


class Separator(nn.Module):
    """The conditioned U-Net plus the official spectral front end and estimation mode.

    ``channels_last`` is an execution setting, not a model parameter: it changes the memory
    layout of the TFC convolutions, never the results, so it is not in ``params`` (nor in
    weights files). ``None`` (auto, the default: channels-last only without autograd, the
    fastest on CPU), ``True`` or ``False``; see :class:`TFC`. It can be changed at any time:
    ``model.channels_last = True``.
    """

    def __init__(self, params: dict, channels_last: bool | None = None):
        super().__init__()
        self.params = dict(params)
        self.net = ConditionedUNet(params)
        self.channels_last = channels_last
        self.front = SpectralFrontEnd(params["n_fft"], params["hop_length"])
        self.bins = params["n_fft"] // 2 + 1
        self.time_multiple = 1
        for t in _scales(params["t_down_layers"], params["n_blocks"] // 2):
            self.time_multiple *= t

    @property
    def channels_last(self) -> bool | None:
        return self._channels_last

    @channels_last.setter
    def channels_last(self, enabled: bool | None) -> None:
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"channels_last must be None (auto), True or False, got {enabled!r}")
        self._channels_last = enabled
        for module in self.modules():
            if isinstance(module, TFC):
                module.channels_last = self._channels_last

    def forward(self, spec: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``[B, 4, T, F]`` mixture spectrogram, ``[B]`` target indices -> ``[B, 4, T, F]``."""
        self._check(spec, condition)
        estimate = self.net(spec, condition)
        return spec * estimate if self.params["spec_est_mode"] == "masking" else estimate

    def separate(self, wave: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``[B, L, 2]`` mixture waveform -> ``[B, L, 2]`` estimate of the conditioned target.

        One window, no chunking (see ``lightsaft.separate`` for whole tracks); L must give a
        frame count the U-Net can downsample.
        """
        return self.front.istft(self(self.front.stft(wave), condition), length=wave.shape[1])

    def _check(self, spec: torch.Tensor, condition: torch.Tensor) -> None:
        if spec.dim() != 4 or spec.shape[1] != 4 or spec.shape[3] != self.bins:
            raise ValueError(
                f"expected a spectrogram [batch, 4, frames, {self.bins}] "
                f"(n_fft={self.params['n_fft']}), got {tuple(spec.shape)}"
            )
        if spec.shape[2] % self.time_multiple:
            raise ValueError(
                f"the number of frames ({spec.shape[2]}) must be a multiple of "
                f"{self.time_multiple}, the U-Net's total time downsampling"
            )
        if condition.shape != (spec.shape[0],) or condition.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"expected one integer condition per batch item, shape ({spec.shape[0]},), "
                f"got {tuple(condition.shape)} {condition.dtype}"
            )
        n_conditions = self.params["control_input_dim"]
        if condition.device.type != "meta" and ((condition < 0) | (condition >= n_conditions)).any():
            raise ValueError(
                f"condition indices must be in 0..{n_conditions - 1} "
                f"({', '.join(f'{i} {t}' for i, t in enumerate(TARGETS))}), "
                f"got {condition.tolist()}"
            )


def build_model(model_params: dict[str, Any], channels_last: bool | None = None) -> Separator:
    """Build the separator from a validated ``model`` section (official argument names + ``variant``;
    :data:`lightsaft.model.params.MODEL` validates one).

    ``channels_last`` is an execution setting: None (auto), True or False; same results (see
    :class:`Separator`).
    """
    return Separator(dict(model_params), channels_last=channels_last)


def init_official(model: torch.nn.Module) -> None:
    """The official initialisation: Xavier-normal on every parameter with two or more dimensions
    (embedding and attention keys included); PyTorch's defaults elsewhere."""
    for parameter in model.parameters():
        if parameter.dim() >= 2:
            torch.nn.init.xavier_normal_(parameter)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
