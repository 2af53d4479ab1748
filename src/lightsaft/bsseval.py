"""BSSEval v4 in batched torch: museval's numbers (``eval_mus_track``), in a fraction of its time.

The definitions are museval's (Vincent et al. 2006; the SiSEC 2018 "v4" variant of Liutkus,
Stöter and Ito 2018): each estimate is projected, by least squares, on the span of the references
delayed by 0..``filters_len``-1 samples (all sources, all channels: ``P_all``) and on the span of
its own reference alone (``P_j``). The filters are estimated once on the whole track
(time-invariant), then applied to each window of the references; per window

    SDR = |s|² / |e - s|²      ISR = |s|² / |P_j - s|²
    SIR = |P_j|² / |P_all - P_j|²      SAR = |P_all|² / |e - P_all|²

with ``s`` the reference and ``e`` the estimate, both zero-padded by ``filters_len - 1``. A window
in which any reference or any estimate is silent (its channel sum is zero throughout) is NaN for
every target, as in museval.

Where museval's time goes, and what this module does instead:
- The Gram matrix of the delayed references (museval: one whole-track FFT per pair, then one LU
  per estimate) comes from block-wise FFT cross-correlations at the needed lags only, and is
  factorized once per track (Cholesky; the own-reference blocks once per target): every estimate
  set scored against the same references (the model's estimates, the mixture baseline) reuses
  it, and a signal repeated across targets (the mixture) is solved once.
- The per-window projections (museval: 20 FFT convolutions per window and target) never go
  back to the time domain: energies are read off the window spectra (Parseval).
Float64 throughout; CPU or CUDA. Conditioning: the references need a noise floor. AAC stems
decoded to float are hard band-limited, the Gram matrix is then singular to float64 precision,
and ISR/SIR/SAR (museval's and ours) become rounding noise, several dB apart between runs of
museval itself with 1 or 2 BLAS threads. Decoded to 16 bits, as musdb does (and ``audio.py``),
they are well-conditioned and both engines agree to about 1e-5 dB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

FILTERS_LEN = 512  # museval's distortion filter length (samples)
_BLOCK_FFT = 8192  # FFT size of the block-wise cross-correlations
_WINDOW_CHUNK = 2  # windows at a time (see _window_energies)


def window_bounds(length: int, window: int, hop: int) -> list[tuple[int, int]]:
    """museval's framing: whole windows only, except one (shorter) window for a short track."""
    if window >= length:
        return [(0, length)]
    count = (length - window + hop) // hop
    return [(t * hop, t * hop + window) for t in range(count)]


def bss_eval_v4(
    references: Sequence[np.ndarray],
    estimate_sets: Sequence[Sequence[np.ndarray]],
    window: int,
    hop: int,
    filters_len: int = FILTERS_LEN,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """museval's ``bss_eval`` (v4: time-invariant filters, no permutation) of several estimate
    sets against the same references.

    ``references``: ``[samples, channels]`` per source (or one ``[sources, samples, channels]``
    array); each estimate set: one signal per source, source ``j`` estimating reference ``j``
    (pass the same array object for every source to score one signal, e.g. the mixture, against
    all of them). Returns, per set, ``[4, sources, windows]`` holding SDR, ISR, SIR, SAR (museval's
    order) in dB: NaN in silent windows, +inf / -inf where a residual / a signal is exactly zero
    (museval's JSON writes both as NaN). Like museval, refuses a source that is silent throughout.
    """
    # Inputs stay in their own dtype (float32 audio: half the memory); the rows below are float64.
    refs = [np.asarray(r) for r in references]
    sets = [[np.asarray(e) for e in est] for est in estimate_sets]
    n_src, (length, n_chan) = len(refs), refs[0].shape
    if (
        length == 0
        or any(x.shape != (length, n_chan) for x in refs + [e for est in sets for e in est])
        or any(len(est) != n_src for est in sets)
    ):
        raise ValueError(
            f"references {[r.shape for r in refs]} and estimates {[[e.shape for e in est] for est in sets]}"
            " must be one non-empty [samples, channels] signal per source, all of one shape"
        )
    window, hop = int(min(window, length)), int(hop)
    signals, which = _distinct(sets)
    # museval's silence test, on the channel sum: a source silent throughout is refused (as in
    # museval's validate()), a window in which any source is silent scores NaN.
    channel_sums = [x @ np.ones(n_chan, np.promote_types(x.dtype, np.float32)) for x in refs + signals]
    for kind, sums in (("reference", channel_sums[:n_src]), ("estimated", channel_sums[n_src:])):
        if not all(x.any() for x in sums):
            raise ValueError(f"every {kind} source must be non-silent (not all zeros); museval refuses it too")
    k, n_ref = filters_len, n_src * n_chan
    # Every channel of every reference, then of every distinct estimate signal, as one row,
    # zero-padded for the block-wise correlations; the windows are views of the same rows.
    n_fft, step, n_blocks = _block_layout(length, k)
    rows = _channel_rows(refs + signals, k - 1, n_blocks * step - length + k - 1, device)
    gram, cross = _correlations(rows, n_ref, k, n_fft, step)
    gram.diagonal().add_(torch.finfo(gram.dtype).eps)  # museval solves (G + eps I) C = D
    filters_all = _solve(gram, cross)  # [S*C*K, U*C]: projection of each signal on all references
    pairs = [(j, u) for ids in which for j, u in enumerate(ids)]
    filters_own = _own_filters(gram, cross, pairs, n_chan * k, n_chan)  # [pairs, C*K, C]

    bounds = window_bounds(length, window, hop)
    silent = np.stack([_silent(x, window, hop, len(bounds)) for x in channel_sums])  # [S + U, windows]
    energies = _window_energies(
        rows[:, k - 1 : k - 1 + length], n_src, n_chan, filters_all, filters_own, pairs, window, hop, len(bounds), k
    )
    results = []
    for s, ids in enumerate(which):
        e = energies[:, s * n_src : (s + 1) * n_src]  # [7, sources, windows]
        metrics = torch.stack([_db(e[0], e[1]), _db(e[0], e[2]), _db(e[3], e[4]), _db(e[5], e[6])]).cpu().numpy()
        metrics[:, :, silent[:n_src].any(0) | silent[[n_src + u for u in ids]].any(0)] = np.nan
        results.append(metrics)
    return results


def _distinct(estimate_sets: list[list[np.ndarray]]) -> tuple[list[np.ndarray], list[list[int]]]:
    """The distinct estimate signals (the mixture baseline repeats one for every target) and,
    per set and source, the index of its signal."""
    signals: list[np.ndarray] = []
    by_key: dict[bytes, list[int]] = {}
    which = []
    for est in estimate_sets:
        ids = []
        for signal in est:
            key = signal[::1009].tobytes()  # a cheap fingerprint; equality is then checked in full
            match = next(
                (i for i in by_key.get(key, []) if signals[i] is signal or np.array_equal(signals[i], signal)), None
            )
            if match is None:
                match = len(signals)
                signals.append(signal)
                by_key.setdefault(key, []).append(match)
            ids.append(match)
        which.append(ids)
    return signals, which


def _block_layout(length: int, k: int) -> tuple[int, int, int]:
    """FFT size, step and count of the correlation blocks: each block of ``step`` samples is
    correlated with itself widened by ``k - 1`` samples on each side (``n_fft`` in all)."""
    n_fft = max(_BLOCK_FFT, 1 << (4 * k - 1).bit_length())
    step = n_fft - 2 * (k - 1)
    return n_fft, step, -(-length // step)


def _channel_rows(signals: list[np.ndarray], left: int, right: int, device) -> torch.Tensor:
    """``[samples, C]`` signals -> ``[signals * C, left + samples + right]``, zero-padded."""
    length, n_chan = signals[0].shape
    rows = torch.zeros(len(signals) * n_chan, left + length + right, dtype=torch.float64, device=device)
    for i, signal in enumerate(signals):
        rows[i * n_chan : (i + 1) * n_chan, left : left + length] = torch.from_numpy(np.ascontiguousarray(signal)).T
    return rows


def _correlations(rows: torch.Tensor, n_ref: int, k: int, n_fft: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix of the delayed references ``[R*K, R*K]`` (the first ``n_ref`` rows) and their
    inner products with the other rows ``[R*K, E]``; ordered (source, channel, delay).

    ``xc[u, v][l] = sum_n u[n] v[n + l]`` for lags ``|l| < k``, accumulated block by block:
    block ``b`` of ``u`` against the same block of ``v`` widened by ``k - 1`` samples each side.
    """
    blocks = rows.unfold(-1, n_fft, step)  # [rows, blocks, n_fft]: block b, widened
    spectra = torch.zeros(n_ref, len(rows), n_fft // 2 + 1, dtype=torch.complex128, device=rows.device)
    for first in range(0, blocks.shape[1], 4):  # a few blocks at a time: small temporaries
        wide = blocks[:, first : first + 4]
        a = torch.fft.rfft(wide[:n_ref, :, k - 1 : k - 1 + step], n=n_fft).conj_physical()  # [R, blocks, F]
        b = torch.fft.rfft(wide)  # [rows, blocks, F]
        for v in range(len(rows)):
            spectra[:, v] += (a * b[v]).sum(1)
    xc = torch.fft.irfft(spectra, n=n_fft)[..., : 2 * k - 1]  # lag l at index l + k - 1
    # xc[u, v][l] = xc[v, u][-l]: average the two, so that the Gram matrix is exactly symmetric
    xc_refs = (xc[:, :n_ref] + xc[:, :n_ref].transpose(0, 1).flip(-1)) / 2
    # <u delayed by a, v delayed by b> = xc[u, v][a - b]: one Toeplitz block per pair (u, v),
    # read as a strided view of the reversed lags (a Hankel matrix), then flipped along a.
    rev = xc_refs.flip(-1).contiguous()  # rev[u, v, m] = xc[u, v][k - 1 - m]
    hankel = rev.as_strided((n_ref, k, n_ref, k), (rev.stride(0), 1, rev.stride(1), 1))  # [u, a', v, b]
    gram = hankel.flip(1).reshape(n_ref * k, n_ref * k)  # a = k - 1 - a'
    # <u delayed by a, e> = xc[u, e][a]
    cross = xc[:, n_ref:, k - 1 :].permute(0, 2, 1).reshape(n_ref * k, -1)
    return gram, cross


def _solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``gram @ C = rhs``. ``gram`` is symmetric positive semi-definite (plus museval's eps):
    Cholesky, half of LU's work, where it succeeds; LU (museval's solver) where rounding makes
    it indefinite; least squares (museval's fallback, here of G + eps I) where even that is
    singular. One matrix at a time: torch 2.13's batched CPU LU fails with more than one
    thread (MKL "Parameter 6 was incorrect on entry to DLASWP").
    """
    factor, info = torch.linalg.cholesky_ex(gram)
    if info == 0:
        return torch.cholesky_solve(rhs, factor)
    solution, info = torch.linalg.solve_ex(gram, rhs)
    if info == 0:
        return solution
    return torch.linalg.lstsq(gram, rhs, driver="gelsd" if gram.is_cpu else None).solution


def _own_filters(
    gram: torch.Tensor, cross: torch.Tensor, pairs: list[tuple[int, int]], block: int, n_chan: int
) -> torch.Tensor:
    """``[pairs, C*K, C]``: the projection of signal ``u`` on target ``j``'s own reference alone,
    for each pair ``(j, u)``; one factorization per target, all its signals as right-hand sides."""
    out: list[torch.Tensor | None] = [None] * len(pairs)
    for j in sorted({j for j, _ in pairs}):
        mine = [i for i, (t, _) in enumerate(pairs) if t == j]
        rhs = torch.cat(
            [cross[j * block : (j + 1) * block, pairs[i][1] * n_chan : (pairs[i][1] + 1) * n_chan] for i in mine], 1
        )
        solution = _solve(gram[j * block : (j + 1) * block, j * block : (j + 1) * block], rhs)
        for n, i in enumerate(mine):
            out[i] = solution[:, n * n_chan : (n + 1) * n_chan]
    return torch.stack(out)


def _silent(channel_sum: np.ndarray, width: int, hop: int, count: int) -> np.ndarray:
    """``[samples]`` -> ``[windows]``: the channel sum is zero throughout the window."""
    zero = channel_sum == 0
    return np.lib.stride_tricks.sliding_window_view(zero, width)[::hop][:count].all(1)


def _fft_size(n: int) -> int:
    """The smallest 5-smooth size >= n (pocketfft and cuFFT are fast on those)."""
    best = 1 << (n - 1).bit_length()
    p2 = 1
    while p2 < best:
        p3 = p2
        while p3 < best:
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = min(best, p5)
            p3 *= 3
        p2 *= 2
    return best


def _window_energies(rows, n_src, n_chan, filters_all, filters_own, pairs, width, hop, count, k) -> torch.Tensor:
    """``[7, pairs, windows]``: |s|², |e-s|², |P_j-s|², |P_j|², |P_all-P_j|², |P_all|², |e-P_all|².

    Each window is convolved with the filters as a whole (zero-padded by ``k - 1``, as museval's
    per-window projection is), in the frequency domain; energies by Parseval, with the rfft's
    bin weights folded into the spectra as their square roots, so every energy is a plain |x|².
    A few windows at a time: small temporaries stay in the allocator's reused memory (large
    ones cost a page fault per page, which dominated this loop).
    """
    dev = rows.device
    n_fft = _fft_size(width + k - 1)
    # Filters as spectra: all references -> each signal [S, Cin, U, Cout, F]; own -> [P, Cin, Cout, F]
    f_all = torch.fft.rfft(filters_all.reshape(n_src, n_chan, k, -1, n_chan).movedim(2, -1), n=n_fft)
    f_own = torch.fft.rfft(filters_own.reshape(len(pairs), n_chan, k, n_chan).movedim(2, -1), n=n_fft)
    target = torch.tensor([j for j, _ in pairs], device=dev)
    signal = torch.tensor([u for _, u in pairs], device=dev)
    weight = torch.full((n_fft // 2 + 1,), 2.0 / n_fft, dtype=torch.float64, device=dev)
    weight[0] = weight[-1] = 1.0 / n_fft
    if n_fft % 2:
        weight[-1] = 2.0 / n_fft  # odd size: the last bin is not Nyquist
    scale = weight.sqrt()

    def energy(x: torch.Tensor) -> torch.Tensor:  # [P, C, T, F] complex -> [P, T]
        return torch.linalg.vector_norm(torch.view_as_real(x), dim=(1, 3, 4)).square()

    windows = rows.unfold(-1, width, hop)[:, :count]  # [rows, windows, width]
    out = []
    for first in range(0, count, _WINDOW_CHUNK):
        spectra = torch.fft.rfft(windows[:, first : first + _WINDOW_CHUNK], n=n_fft) * scale
        spectra = spectra.reshape(-1, n_chan, *spectra.shape[1:])  # [S + U, C, T, F]
        ref_f, est_f = spectra[:n_src], spectra[n_src:]
        proj_all = sum(
            ref_f[s, i, None, None] * f_all[s, i, :, :, None] for s in range(n_src) for i in range(n_chan)
        )  # [U, C, T, F]
        own = ref_f[target]  # [P, C, T, F]
        proj_own = sum(own[:, i, None] * f_own[:, i, :, None] for i in range(n_chan))  # [P, C, T, F]
        est, proj_all = est_f[signal], proj_all[signal]
        out.append(
            torch.stack(
                [
                    energy(own),
                    energy(est - own),
                    energy(proj_own - own),
                    energy(proj_own),
                    energy(proj_all - proj_own),
                    energy(proj_all),
                    energy(est - proj_all),
                ]
            )
        )
    return torch.cat(out, -1)


def _db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """10 log10(num / den); +inf for a zero denominator (museval's ``_safe_db``)."""
    return torch.where(den == 0, torch.inf, 10 * torch.log10(num / den))
