"""Whole-track separation: chunk the mixture, run the model over chunks and targets, overlap-add.

A model window holds ``hop * (num_frame - 1)`` samples, i.e. ``num_frame`` STFT frames. Its
edges see less context (STFT reflect padding, the U-Net's zero padding), so, as in the official
code, ``ceil(5000 / hop) * hop`` samples are dropped at each side of every window. The kept
middles are cross-faded with a window whose shifted copies sum to exactly one, and the track is
padded so that its first and last samples are also covered at full weight: an identity model
gives back its input.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .data.audio import AudioError, read_audio, resample, to_stereo, write_audio
from .devices import resolve_device
from .errors import LightSAFTError
from .model import Separator, load_weights
from .paths import atomic_dir
from .spectral import SAMPLE_RATE, TARGETS, window_samples

EDGE_SAMPLES = 5000  # official: ceil(5000 / hop) * hop samples trimmed at each window edge


class SeparationError(LightSAFTError, RuntimeError):
    """Separation cannot run as asked: bad targets/overlap/device, weights, output folder."""


# ---------------------------------------------------------------------------------------
# Chunking and cross-fading
def edge_trim(hop_length: int, num_frame: int) -> int:
    """Samples dropped at each window edge: the official amount, but at most a quarter window
    (small test configs have windows shorter than the official 2 x 5000 samples)."""
    return min(math.ceil(EDGE_SAMPLES / hop_length), (num_frame - 1) // 4) * hop_length


def crossfade(kept: int, overlap: float) -> tuple[np.ndarray, int]:
    """A window of ``kept`` samples and the step at which its shifted copies sum to one.

    The window is a rectangle one step long smoothed by a unit-sum Hann kernel as long as the
    shared part: rectangles one step apart tile the line, and smoothing keeps the sum at one,
    for any overlap (with overlap <= 0.5 it is a flat top with smooth S-shaped ramps).
    """
    shared = min(round(overlap * kept), kept - 1)  # at least one new sample per step
    step = kept - shared
    kernel = np.hanning(shared + 3)[1:-1]  # shared + 1 strictly positive taps
    ramp = np.concatenate([np.zeros(step), np.cumsum(kernel / kernel.sum()), np.ones(step)])
    n = np.arange(kept)
    return ramp[n + step] - ramp[n], step


def check_options(targets: Iterable[str], overlap: float, batch_size: int) -> tuple[str, ...]:
    """Validate the separation options (before any work starts); returns the targets as a tuple."""
    targets = tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise SeparationError(f"targets {','.join(targets) or '(none)'}: choose one or more of {', '.join(TARGETS)}")
    if not 0 <= overlap <= 0.9:
        raise SeparationError(f"overlap {overlap}: must be between 0 and 0.9")
    if batch_size < 1:
        raise SeparationError(f"batch size {batch_size}: must be at least 1")
    return targets


def separate_track(
    model: Separator,
    mixture: np.ndarray,
    targets: Sequence[str] = TARGETS,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: str = "auto",
) -> dict[str, np.ndarray]:
    """Separate a whole stereo 44.1 kHz track ``[L, 2]`` into ``{target: float32 [L, 2]}``.

    Runs batches of (chunk, target) pairs through the model in eval mode; on a GPU with bf16,
    under bf16 autocast. Moves the model to ``device``.
    """
    targets = check_options(targets, overlap, batch_size)
    if mixture.ndim != 2 or mixture.shape[1] != 2 or len(mixture) == 0:
        raise SeparationError(f"expected a stereo mixture [samples, 2], got shape {mixture.shape}")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    hop, num_frame = model.params["hop_length"], model.params["num_frame"]
    window, edge = window_samples(num_frame, hop), edge_trim(hop, num_frame)
    fade, step = crossfade(window - 2 * edge, overlap)
    kept, shared = len(fade), len(fade) - step

    length = len(mixture)
    n_chunks = math.ceil((length + shared) / step)
    lead = edge + shared  # padding before sample 0: the dropped edge plus the fade-in
    padded = torch.zeros((n_chunks - 1) * step + window, 2, device=dev)
    padded[lead : lead + length] = torch.as_tensor(mixture, dtype=torch.float32, device=dev)
    chunks = padded.unfold(0, window, step).transpose(1, 2)  # [n_chunks, window, 2] (a view)
    fade_t = torch.as_tensor(fade, dtype=torch.float32, device=dev)[:, None]
    out = torch.zeros(len(targets), len(padded), 2, device=dev)

    pairs = [(c, k) for c in range(n_chunks) for k in range(len(targets))]
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            ids = torch.tensor([c for c, _ in batch], device=dev)
            condition = torch.tensor([TARGETS.index(targets[k]) for _, k in batch], device=dev)
            unique, inverse = torch.unique(ids, return_inverse=True)  # one STFT per chunk
            spec = model.front.stft(chunks[unique])[inverse]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                estimate = model(spec, condition)
            waves = model.front.istft(estimate.float(), length=window)[:, edge : edge + kept] * fade_t
            for (c, k), wave in zip(batch, waves):
                out[k, c * step + edge : c * step + edge + kept] += wave
    result = out[:, lead : lead + length].cpu().numpy()
    return {target: result[k] for k, target in enumerate(targets)}


# ---------------------------------------------------------------------------------------
# The separate stage and the command line
def load_separator(weights_path: str | Path) -> Separator:
    try:
        return load_weights(weights_path)
    except (FileNotFoundError, ValueError) as e:
        raise SeparationError(str(e)) from None


def _write_estimates(folder: Path, estimates: dict[str, np.ndarray], rate: int) -> None:
    for target, audio in estimates.items():
        write_audio(folder / f"{target}.wav", audio, rate)


def separate_tracks(weights_path: str | Path, cache: Any, out_dir: str | Path, separate_params: dict[str, Any]) -> Path:
    """The ``separate`` stage: every test track of ``cache`` -> ``out_dir/test/<track>/<target>.wav``.

    ``cache`` is anything with ``.tracks("test")`` and ``.load_audio(name)`` (``lightsaft.data.cache.Cache``).
    The layout is MUSDB's estimates layout, which museval reads.
    """
    model = load_separator(weights_path)
    tracks = cache.tracks("test")
    if not tracks:
        raise SeparationError("the cache holds no test tracks; rerun the prepare stage")
    for track in tracks:
        if Path(track).name != track or track in ("", ".", ".."):
            raise SeparationError(f"track name {track!r} cannot be a folder name")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for track in tqdm(tracks, desc="separate", unit="track"):
            estimates = separate_track(
                model,
                cache.load_audio(track, stems=("mixture",))["mixture"],
                overlap=separate_params["overlap"],
                batch_size=separate_params["batch_size"],
                device=separate_params["device"],
            )
            _write_estimates(tmp / "test" / track, estimates, SAMPLE_RATE)
    return out_dir


def song_name(path: str | Path) -> str:
    """``a/Song.stem.mp4`` -> ``Song``, ``a/Song.wav`` -> ``Song``."""
    stem = Path(path).stem
    return stem.removesuffix(".stem") or stem


def _writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise SeparationError(
            f"{path}: cannot write the output folder: {e.strerror or e}; choose another --out"
        ) from None


def separate_song(
    model: Separator,
    song: str | Path,
    folder: Path,
    targets: Sequence[str],
    overlap: float,
    batch_size: int,
    device: str,
) -> None:
    """One file of any rate, mono or stereo -> ``folder/<target>.wav`` at its own rate and length.

    A ``.stem.mp4`` contributes stream 0, its mixture. Mono input gives mono estimates (the
    mean of the two channels separated from the duplicated mono signal).
    """
    audio, rate = read_audio(song, stream=0)
    if len(audio) == 0:
        raise AudioError(f"{song}: holds no audio samples")
    stereo = resample(to_stereo(audio, song), rate, SAMPLE_RATE)
    estimates = separate_track(model, stereo, targets, overlap, batch_size, device)
    for target, estimate in estimates.items():
        estimate = resample(estimate, SAMPLE_RATE, rate)[: len(audio)]
        estimate = np.pad(estimate, ((0, len(audio) - len(estimate)), (0, 0)))
        if audio.shape[1] == 1:
            estimate = estimate.mean(axis=1, keepdims=True)
        write_audio(folder / f"{target}.wav", estimate, rate)


def separate_songs(
    songs: Sequence[str | Path],
    weights_path: str | Path,
    out_dir: str | Path,
    targets: Sequence[str] = TARGETS,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: str = "auto",
) -> list[str]:
    """``lightsaft separate``: each song -> ``out_dir/<song>/<target>.wav``; returns the failures.

    A song that cannot be read is reported (on stderr, naming it) and skipped; the rest still
    run. Problems that stop everything (targets, weights, output folder) raise SeparationError.
    """
    targets = check_options(targets, overlap, batch_size)
    resolve_device(device)
    out_dir = Path(out_dir)
    _writable_dir(out_dir)
    model = load_separator(weights_path)
    failures: list[str] = []
    seen: dict[str, Path] = {}
    for song in tqdm([Path(s) for s in songs], desc="separate", unit="song"):
        name = song_name(song)
        try:
            if name in seen:
                raise SeparationError(
                    f"{song}: writes {out_dir / name}, as {seen[name]} already does; "
                    f"rename one of them or separate them into different --out folders"
                )
            seen[name] = song
            separate_song(model, song, out_dir / name, targets, overlap, batch_size, device)
        except (AudioError, SeparationError, OSError) as e:
            failures.append(str(e))
            tqdm.write(f"error: {e}", file=sys.stderr)
    return failures
