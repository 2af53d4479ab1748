"""The official LaSAFT STFT convention, in one place for the model, the cache and separation.

Waveforms are ``[B, L, 2]`` (time first, stereo last). The network sees ``[B, 4, T, F]``
with ``F = n_fft // 2 + 1`` and channels ``[Re(L), Re(R), Im(L), Im(R)]`` (real parts of
both audio channels first). STFT: periodic Hann window of ``n_fft``, ``center=True``,
reflect padding, not normalized, one-sided; the inverse uses the same window.
"""

from __future__ import annotations

import math

import torch

SAMPLE_RATE = 44100
TARGETS = ("vocals", "drums", "bass", "other")  # condition index = position in this tuple
EDGE_SAMPLES = 5000  # official min_trim: ceil(5000 / hop) * hop samples trimmed at each window edge


def num_frames(num_samples: int, hop_length: int) -> int:
    """STFT frames of a ``center=True`` transform of ``num_samples`` samples."""
    return num_samples // hop_length + 1


def window_samples(num_frame: int, hop_length: int) -> int:
    """Samples that give exactly ``num_frame`` frames (what ``istft`` returns without ``length``)."""
    return hop_length * (num_frame - 1)


def edge_trim(hop_length: int, num_frame: int, min_trim: int = EDGE_SAMPLES) -> int:
    """Samples trimmed at each window edge (separation crossfade, validation windows): the official
    amount, ceil(min_trim / hop) hops, but at most a quarter
    window (small test configs have windows shorter than the official 2 x 5000 samples)."""
    return min(math.ceil(min_trim / hop_length), (num_frame - 1) // 4) * hop_length


class SpectralFrontEnd(torch.nn.Module):
    """Waveform <-> 4-channel complex spectrogram, exactly as the official framework does it."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        # Not persistent: the window is derived from n_fft and must not live in weight files.
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, L, 2]`` waveform -> ``[B, 4, T, F]`` spectrogram."""
        if wave.dim() != 3 or wave.shape[-1] != 2:
            raise ValueError(f"expected a stereo waveform [batch, samples, 2], got {tuple(wave.shape)}")
        batch, length, channels = wave.shape
        flat = wave.float().transpose(1, 2).reshape(batch * channels, length)
        spec = torch.stft(
            flat,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.view_as_real(spec)  # [B*ch, F, T, re/im]
        spec = spec.reshape(batch, channels, *spec.shape[1:]).permute(0, 4, 1, 3, 2)  # [B, re/im, ch, T, F]
        return spec.reshape(batch, 2 * channels, spec.shape[3], spec.shape[4])

    def istft(self, spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """``[B, 4, T, F]`` spectrogram -> ``[B, L, 2]`` waveform (``L = hop*(T-1)`` unless given).

        Works on low-precision (bf16/fp16) model outputs: the transform itself runs in float32.
        """
        batch, four, frames, bins = spec.shape
        if four != 4 or bins != self.n_fft // 2 + 1:
            raise ValueError(
                f"expected a spectrogram [batch, 4, frames, {self.n_fft // 2 + 1}], got {tuple(spec.shape)}"
            )
        parts = spec.float().reshape(batch, 2, 2, frames, bins).permute(0, 2, 4, 3, 1)  # [B, ch, F, T, re/im]
        complex_spec = torch.view_as_complex(parts.contiguous()).reshape(batch * 2, bins, frames)
        wave = torch.istft(
            complex_spec,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            normalized=False,
            onesided=True,
            length=length,
        )
        return wave.reshape(batch, 2, -1).transpose(1, 2)
