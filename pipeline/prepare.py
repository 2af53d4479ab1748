"""DVC stage `prepare`: decode every track once into the memory-mapped spectrogram cache."""

from lightsaft.data.cache import prepare
from lightsaft.stage import run_stage


def _prepare(params, args):
    m = params["model"]
    prepare(args.dataset, args.out, m["n_fft"], m["hop_length"], params["prepare"]["dtype"])
    print(f"wrote {args.out}")


def _arguments(parser):
    parser.add_argument("--dataset", default="data/raw/dataset.json")
    parser.add_argument("--out", default="data/cache")


if __name__ == "__main__":
    run_stage("prepare", _prepare, add_arguments=_arguments)
