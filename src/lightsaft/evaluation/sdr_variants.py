"""The SDR variants the field reports beside museval's BSSEval v4 SDR, over whole tracks.

museval's SDR (SiSEC 2018) is the median over 1 s frames of a BSSEval v4 projection; two other
numbers are common in papers and leaderboards, and neither is comparable with it:

* **MDX SDR** (the Music Demixing Challenge 2021): per song and target,
  ``10 log10((sum(s^2) + eps) / (sum((s - s_hat)^2) + eps))`` with the sums over all samples and
  both channels of the whole track and ``eps = 1e-7``; a song's SDR is the mean over its four
  targets and the leaderboard's score the mean over songs, not the median (Mitsufuji et al.,
  "Music Demixing Challenge 2021", Front. Signal Process. 2022; the SDX 2023 starter kit's README
  says the same). No projection: a gain error counts as distortion. The epsilon keeps silent
  targets finite (a silent reference with a silent estimate scores 0 dB). Source: the ``sdr``
  function inside ``MusicDemixingPredictor.scoring`` in ``evaluator/music_demixing.py`` of
  github.com/AIcrowd/music-demixing-challenge-starter-kit (added in 7802a7d5, 2021-05-03, and
  unchanged to the kit's last commit ec659145, 2021-07-30; ``docs/LOCAL_RUN.md`` prints it too;
  d370a878 fixed the loop around it, which had read the bass estimate for every target).
  The kit casts the audio to float32 before summing; we sum in float64, which differs from it by
  float32 rounding only. The epsilon assumes audio on the [-1, 1] scale of decoded WAV/MUSDB18.
* **SI-SDR** (Le Roux, Wisdom, Erdogan, Hershey, "SDR - half-baked or well done?", ICASSP 2019):
  per channel, both signals made zero-mean, the estimate projected on the reference
  (``alpha = <s_hat, s> / <s, s>``), then ``10 log10(|alpha s|^2 / |alpha s - s_hat|^2)``; the
  track's value is the mean of the two channels' dB. Invariant to the estimate's gain. We add
  ``SI_SDR_EPS`` to the projection's denominator and to both energies (torchmetrics does likewise
  with the dtype's machine epsilon), so that silence gives finite numbers instead of NaN or
  infinities; on real audio the change is far below 0.001 dB. Silence, where the definition is
  0/0: a silent reference scores strongly negative against a non-silent estimate and 0 dB against
  a silent one (as the MDX SDR does); a silent estimate scores 0 dB whatever the reference, as it
  does under the MDX SDR (its error is then the reference itself).

Functions take a reference and an estimate ``[samples, channels]`` (float, same shape) and return
a float; :func:`score_track` scores a dict of targets of one track under the keys the pipeline
uses (``sdr_mdx_<target>``, ``si_sdr_<target>`` and their ``_mean`` over targets).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import LightSAFTError

MDX_EPS = 1e-7  # the MDX 2021 starter kit's delta, added to both energies
SI_SDR_EPS = 1e-8


class SignalError(LightSAFTError, ValueError):
    """A reference/estimate pair that cannot be scored."""


def _pair(reference: np.ndarray, estimate: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    reference, estimate = np.asarray(reference, dtype=np.float64), np.asarray(estimate, dtype=np.float64)
    if reference.ndim != 2 or reference.shape != estimate.shape or reference.shape[0] == 0:
        raise SignalError(
            f"{what}: reference {reference.shape} and estimate {estimate.shape} must both be "
            "[samples, channels] with the same, non-zero number of samples; trim the estimate to the reference"
        )
    if not (np.isfinite(reference).all() and np.isfinite(estimate).all()):
        raise SignalError(f"{what}: the audio holds NaN or infinite samples; check the separation output")
    return reference, estimate


def mdx_sdr(reference: np.ndarray, estimate: np.ndarray, what: str = "signal") -> float:
    """The MDX challenge's SDR of one target of one song (dB), over the whole track."""
    reference, estimate = _pair(reference, estimate, what)
    signal = np.sum(reference**2) + MDX_EPS
    error = np.sum((reference - estimate) ** 2) + MDX_EPS
    return float(10 * np.log10(signal / error))


def si_sdr(reference: np.ndarray, estimate: np.ndarray, what: str = "signal") -> float:
    """Scale-invariant SDR of one target of one track (dB): per channel over the whole track,
    zero-mean, then the mean over channels."""
    reference, estimate = _pair(reference, estimate, what)
    reference = reference - reference.mean(axis=0)
    estimate = estimate - estimate.mean(axis=0)
    alpha = np.sum(estimate * reference, axis=0) / (np.sum(reference**2, axis=0) + SI_SDR_EPS)
    target = alpha * reference
    ratio = (np.sum(target**2, axis=0) + SI_SDR_EPS) / (np.sum((estimate - target) ** 2, axis=0) + SI_SDR_EPS)
    return float(np.mean(10 * np.log10(ratio)))


def score_track(
    references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray], track: str = "track"
) -> dict[str, float]:
    """``sdr_mdx_<target>`` and ``si_sdr_<target>`` of every estimated target of one track, and
    ``sdr_mdx_mean`` / ``si_sdr_mean``: the means over those targets (the MDX per-song SDR)."""
    if not estimates:
        raise SignalError(f"{track}: no estimated targets to score")
    missing = [t for t in estimates if t not in references]
    if missing:
        raise SignalError(f"{track}: no reference for the estimated target(s) {', '.join(missing)}")
    scores = {}
    for target, estimate in estimates.items():
        scores[f"sdr_mdx_{target}"] = mdx_sdr(references[target], estimate, f"{track} {target}")
        scores[f"si_sdr_{target}"] = si_sdr(references[target], estimate, f"{track} {target}")
    for prefix in ("sdr_mdx", "si_sdr"):
        scores[f"{prefix}_mean"] = float(np.mean([scores[f"{prefix}_{t}"] for t in estimates]))
    return scores
