"""The published LaSAFT / LightSAFT models: download, verify, import once into our weights format.

The authors serve their checkpoints over plain http, so a checksum is the only integrity check:
every download must have the sha256 the authors published in their Git LFS pointers (or the one
given with ``--sha256``). An imported model lives in ``.lightsaft/pretrained/<name>.pt`` (outside
DVC's outputs, ignored by git) and is reused from there; it records the sha256 of the checkpoint it
came from, so any copy of it is still known as that published model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, LightSAFTError
from ..fetch import fetch
from ..model.params import MODEL
from ..paths import file_lock, file_sha256, project_root
from .official import OfficialModel, read_official
from .ours import save_weights

OFFICIAL_URL = "http://intelligence.korea.ac.kr/assets/"
URL_ENV = "LIGHTSAFT_PRETRAINED_URL"  # base URL override (a mirror, or a test server)
OFFICIAL_MIN_TRIM = 5000  # get_trim_length of the main official repository
PINNED = "published by the authors"


@dataclass(frozen=True)
class Published:
    sha256: str  # published by the authors (a Git LFS pointer of theirs)
    size: str  # for the manual-download hint
    model: dict[str, Any]  # its model section, complete


# The MDX 2021 kit's predictor (test_lightsaft.py through its SingleTrackSet) trims
# get_trim_length(hop, 8192) = 8192 samples per window side, chunks contiguous (no overlap): our
# crossfade protocol at overlap 0 with min_trim 8192 is that algorithm. (The kit's get_trim_length
# defaults to 16384, which only the framework's own separate_track uses, broken there.)
MDX_KIT = {"protocol": "crossfade", "overlap": 0.0, "min_trim": 8192}
MIN_TRIM = {"lightsaft_small_2020": MDX_KIT["min_trim"]}

# Our model section of each published network: the hyper-parameters the official code rebuilds it
# with (official repository, lasaft/pretrained/load_pretrained_nets.py, __define_large_params__; the
# MDX kit's copy of that file, __define_small_params__), the variant told by the checkpoints' keys.
_LASAFT_LARGE = {
    "variant": "lasaft",
    "n_fft": 4096,
    "hop_length": 1024,
    "num_frame": 128,
    "spec_type": "complex",
    "spec_est_mode": "mapping",
    "n_blocks": 9,
    "input_channels": 4,
    "internal_channels": 24,
    "first_conv_activation": "relu",
    "last_activation": "identity",
    "t_down_layers": None,
    "f_down_layers": None,
    "n_internal_layers": 5,
    "kernel_size_t": 3,
    "kernel_size_f": 3,
    "tfc_tdf_activation": "relu",
    "bn_factor": 16,
    "min_bn_units": 16,
    "tfc_tdf_bias": False,
    "num_tdfs": 6,
    "dk": 32,
    "control_vector_type": "embedding",
    "control_input_dim": 4,
    "embedding_dim": 64,
    "control_n_layer": 4,
    "control_type": "dense",
    "condition_to": "decoder",
    "pocm_type": "matmul",
    "pocm_norm": "batch_norm",
}
_LIGHTSAFT_SMALL = {  # the LightSAFT entry to the Music Demixing Challenge 2021
    **_LASAFT_LARGE,
    "variant": "lightsaft",
    "n_fft": 2048,
    "num_frame": 256,
    "internal_channels": 16,
    "num_tdfs": 16,
    "dk": 64,
}
# LaSAFT-Net-v1 large (ICASSP 2021, Table 2), one checkpoint per training seed, and the MDX entry. The
# hashes are the Git LFS pointers' of ws-choi/Conditioned-Source-Separation-LaSAFT, assets/ (2020: still
# there; 2019 and 2021: added and removed on 2021-08-10, commits a9c6838 and fa13981 / 31d0ebf) and of
# ws-choi/LightSAFT-Net-for-MDX-Challenge (commit b2d4184, "694": the epoch=694 checkpoint).
PUBLISHED = {
    "lasaft_large_2019": Published(
        "f9022f2c7c513a826932deb2e91f63858ee5b7d6cd5afcdfdac1cd012231ac0f", "378,945,836 bytes", _LASAFT_LARGE
    ),
    "lasaft_large_2020": Published(
        "d14d2dd27ed568f552be88e9ed4d8bb8ca2722e03c936ea16e8e260ab49da9f1", "378,945,635 bytes", _LASAFT_LARGE
    ),
    "lasaft_large_2021": Published(
        "8a5320702a3315088f455dbb4c541b6b9aaa3f16296358fe026c501de65973d9", "378,945,571 bytes", _LASAFT_LARGE
    ),
    "lightsaft_small_2020": Published(
        "abaccde358dc06daa2faf2c0e6086731634a5260c0019e8eaecb50114aebc5bf", "50,358,956 bytes", _LIGHTSAFT_SMALL
    ),
}


def published_model(name: str) -> dict[str, Any]:
    """The model section of a published checkpoint, validated (every key spelled out above)."""
    return MODEL.validate(PUBLISHED[name].model, where=name)


class PretrainedError(LightSAFTError, RuntimeError):
    """A published model cannot be fetched or verified."""


def cache_dir() -> Path:
    return project_root() / ".lightsaft" / "pretrained"


def published_name(sha256: str | None) -> str | None:
    """The published model whose checkpoint has this sha256, if any."""
    return next((name for name, p in PUBLISHED.items() if p.sha256 == sha256), None)


def default_min_trim(published: str | None) -> int:
    """Samples the official separation trims per window side for a published model (or any other)."""
    return MIN_TRIM.get(published, OFFICIAL_MIN_TRIM)


def url_of(name: str) -> str:
    base = os.environ.get(URL_ENV) or OFFICIAL_URL
    return f"{base.rstrip('/')}/{name}.ckpt"


# ---------------------------------------------------------------------------------------
# Download
def fetch_published(name: str, sha256: str | None = None) -> tuple[Path, str, str]:
    """Download (or reuse) a published checkpoint and verify it: ``(path, sha256, how it was verified)``.

    A file whose hash differs is deleted. Offline, the error gives the URL and the manual steps.
    """
    url, dest = url_of(name), cache_dir() / "downloads" / f"{name}.ckpt"
    with file_lock(cache_dir() / f".{name}.lock"):  # queued experiments share the download
        try:
            fetch(url, dest, allow_insecure_http=True)  # plain http for the authors' own files only
        except DataError as e:
            raise PretrainedError(
                f"{name}: download failed: {e}\nto fetch it by hand: download {url} ({PUBLISHED[name].size}), "
                f"save it as {dest}, and run the same command "
                f"again (the file is verified then); or run `lightsaft import-official FILE` on your copy"
            ) from None
        actual = file_sha256(dest)
        expected, source = (sha256.lower(), "pinned with --sha256") if sha256 else (PUBLISHED[name].sha256, PINNED)
        if actual != expected:
            dest.unlink()
            raise PretrainedError(
                f"{name}: {url} sent a file with sha256 {actual}, but {expected} was {source}; the download "
                f"was deleted. The file was altered (plain http) or replaced upstream: check before trusting it"
            )
        return dest, actual, f"verified: {source}"


# ---------------------------------------------------------------------------------------
# Import
@dataclass
class Imported:
    """An official checkpoint written as our weights file."""

    source: str
    sha256: str
    verified: str  # how the source's hash was checked (or why it was not)
    out: Path
    official: OfficialModel
    trusted: bool

    def summary(self) -> str:
        o = self.official
        config = ", ".join(f"{k}={v}" for k, v in o.params.items() if k != "variant")
        lines = [
            f"imported {self.source}",
            f"  sha256 {self.sha256} ({self.verified})",
            f"  variant {o.params['variant']}, {o.parameter_count:,} parameters",
            f"  config: {config}",
            f"  stft window: periodic Hann of n_fft, max deviation {o.window_deviation:.2g} (dropped; ours is exact)",
        ]
        lines.append("  training, as the file records it (none of it is used by the import):")
        lines += [f"    {line}" for line in o.training.lines()]
        if self.trusted:
            lines.append("  --trust: loaded with full unpickling (any code in the file has run)")
        lines.append(f"  -> {self.out}")
        return "\n".join(lines)


def default_out(source: str | Path, sha256: str) -> Path:
    """Where an import lands: ``<name>.pt`` for a published name, ``<stem>-<sha256[:12]>.pt`` for a
    file (two files of one name must not share a cache entry)."""
    name = str(source) if str(source) in PUBLISHED else f"{Path(source).stem}-{sha256[:12]}"
    return cache_dir() / f"{name}.pt"


def import_official(
    source: str | Path, out: str | Path | None = None, sha256: str | None = None, trust: bool = False
) -> Imported:
    """Import a published name or an official checkpoint file into our weights format (atomic write).

    ``sha256`` pins the source's hash; ``trust`` allows full unpickling (files you trust only).
    """
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise PretrainedError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    if str(source) in PUBLISHED:
        path, actual, verified = fetch_published(str(source), sha256)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found (published names: {', '.join(PUBLISHED)})")
        actual = file_sha256(path)
        if sha256 is not None and actual != sha256.lower():
            raise PretrainedError(f"{path}: sha256 {actual} does not match --sha256 {sha256}; nothing imported")
        verified = "verified: pinned with --sha256" if sha256 else identified(actual)
    out = Path(out) if out is not None else default_out(source, actual)
    return write_import(path, out, str(source), actual, verified, trust)


def identified(sha256: str) -> str:
    """How a local file's hash was checked: against the published ones."""
    name = published_name(sha256)
    return f"verified: {name}, {PINNED}" if name else "a local file: not verified"


def write_import(path: Path, out: Path, source: str, sha256: str, verified: str, trust: bool = False) -> Imported:
    """Read the official checkpoint at ``path`` (whose hash the caller has taken) and write it to ``out``
    as our weights file, which records that hash."""
    official = read_official(path, trust=trust)
    save_weights(out, official.model, official.params, source_sha256=sha256)
    return Imported(source, sha256, verified, out, official, trust)
