"""DVC stage `prepare`: decode every track once into the memory-mapped spectrogram cache."""

import lightsaft.environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from lightsaft import layout
from lightsaft.data.tracks import SPLITS
from lightsaft.prepare import prepare
from lightsaft.stage import run_stage


def main(params: dict, args) -> None:
    m = params["model"]
    # A pretrained model is only evaluated: the test tracks are all it needs (no training spectrograms).
    splits = ("test",) if params["train"]["pretrained"] else SPLITS
    jobs = params["runtime"]["prepare"]["jobs"]
    out = prepare(layout.DATASET, layout.CACHE, m["n_fft"], m["hop_length"], params["prepare"]["dtype"], splits, jobs)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_stage("prepare", main)
