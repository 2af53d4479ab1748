"""DVC stage `prepare`: decode every track once into the memory-mapped spectrogram cache."""

from lightsaft import layout
from lightsaft.data.cache import prepare
from lightsaft.stage import run_stage


def main(params: dict, args) -> None:
    m = params["model"]
    print(f"wrote {prepare(layout.DATASET, layout.CACHE, m['n_fft'], m['hop_length'], params['prepare']['dtype'])}")


if __name__ == "__main__":
    run_stage("prepare", main)
