"""Peak memory of ``lightsaft separate`` on a long and a ten times shorter file, each in a fresh process.

Two synthetic stereo 44.1 kHz 16-bit wavs (tones and noise, below full scale: nothing clips) of
``--minutes`` each (default 6 and 60), an untrained small model (speed and memory do not depend on
the weights; its windows are long, so an hour runs in minutes on a CPU), the command's defaults
otherwise; one target by default (``--targets``: the whole-track code's memory grows with each
target too, and an hour of four targets would take it past this machine's memory). Each file is
separated by a new Python process running the command in-process; the process prints its own
peak resident memory (``ru_maxrss``). Memory that does not grow with the file's length gives a
ratio near 1; the whole-track code held the decoded file, the padded track and the outputs
(several times the file's float32 size per target).

Runs against whatever ``lightsaft`` is first on PYTHONPATH, so the same script measures the code
before and after a change:

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/separate_memory.py [--minutes 6 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 44100
# A small LightSAFT with long windows (31744 samples): few forward passes per hour of audio.
MODEL = {"n_fft": 1024, "hop_length": 512, "num_frame": 64, "n_blocks": 3, "internal_channels": 4}
MODEL.update(n_internal_layers=1, bn_factor=4, min_bn_units=4, num_tdfs=2, dk=4, embedding_dim=4, control_n_layer=2)


def write_song(path: Path, minutes: float, block_seconds: int = 60) -> None:
    """Tones and noise at about -20 dBFS, written a block at a time."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    total = round(minutes * 60 * RATE)
    with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16") as f:
        for start in range(0, total, block_seconds * RATE):
            t = np.arange(start, min(total, start + block_seconds * RATE)) / RATE
            tones = 0.1 * np.sin(2 * np.pi * np.outer(t, [220.0, 331.0])) * (1 + np.sin(2 * np.pi * 0.25 * t))[:, None]
            f.write((tones + 0.02 * rng.standard_normal((len(t), 2))).astype(np.float32))


def write_model(path: Path) -> None:
    import torch

    from lightsaft.config import defaults
    from lightsaft.model.params import MODEL as SECTION
    from lightsaft.model.unet import build_model
    from lightsaft.weights.ours import save_weights

    params = SECTION.validate({**defaults()["model"], **MODEL})
    torch.manual_seed(0)
    save_weights(path, build_model(params), params)


def child(song: str, weights: str, out: str, targets: str) -> None:
    """In the fresh process: the command, in-process; then this process's peak memory."""
    import resource

    from lightsaft.cli import main

    start = time.perf_counter()
    code = main(["separate", song, "--model", weights, "--out", out, "--device", "cpu", "--targets", targets])
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"code": code, "peak": peak, "wall": wall}))


def measure(song: Path, weights: Path, out: Path, targets: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(song), str(weights), str(out), targets]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the separation of {song} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        sys.exit(f"lightsaft separate {song} exited {result['code']}:\n{done.stderr[-3000:]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[6.0, 60.0], help="file lengths (shortest first)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 and 30 seconds")
    parser.add_argument("--targets", default="vocals", help="--targets of the command (default: vocals)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    minutes = [0.05, 0.5] if args.quick else sorted(args.minutes)
    import lightsaft

    print(f"lightsaft separate --targets {args.targets}: peak memory of a fresh process")
    print(f"code: {Path(lightsaft.__file__).parent}")
    print(f"{'file':>10}{'audio MB':>10}{'peak MB':>10}{'wall s':>9}{'peak / shortest':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_model(tmp / "weights.pt")
        first = None
        for length in minutes:
            song = tmp / f"song{length:g}min.wav"
            write_song(song, length)
            result = measure(song, tmp / "weights.pt", tmp / f"out{length:g}", args.targets)
            first = first or result["peak"]
            float32_mb = length * 60 * RATE * 2 * 4 / 1e6
            print(
                f"{length:>7g} min{float32_mb:10.0f}{result['peak'] / 1e6:10.0f}{result['wall']:9.1f}"
                f"{result['peak'] / first:17.2f}"
            )
            song.unlink()
    print("audio MB: the file as float32 stereo; peak: ru_maxrss of the process (imports included)")


if __name__ == "__main__":
    main()
