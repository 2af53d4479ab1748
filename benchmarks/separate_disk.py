"""Disk per study point: the separated test set and the checkpoints, measured, then projected to
the seed config.

Estimates: the real MUSDB18 excerpts of ../shared/musdb (80s Rock, Falcon 69) separated by a
demo-config model trained here on 80s Rock (``--weights``: a model of yours instead); what FLAC
saves depends on the signal, so a separation of music is measured, not noise. Each target is
written by the separate stage's writer as float32 wav (the stage's format before) and as 16-bit
FLAC (now), and 16-bit wav for comparison: bytes per second of audio. Checkpoints: the trained
model's ``weights.pt`` and ``best.ckpt`` (weights + Adam state), bytes per parameter; the seed
config's ``weights.pt`` is written (its size does not depend on the values) and its
``best.ckpt`` projected at the measured bytes per parameter. Per point at the seed config:
MUSDB18's test set (50 tracks, about 3.5 h, four stereo targets) plus the two checkpoints.

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/separate_disk.py [--weights models/weights.pt] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

TEST_SET_SECONDS = 3.5 * 3600  # MUSDB18 test set: 50 tracks, about 3.5 hours
SHARED = Path(os.environ.get("LIGHTSAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TRAIN, TEST = "Music Delta - 80s Rock", "The Easton Ellises - Falcon 69"
FORMATS = {"float": "float32 wav (before)", "wav16": "16-bit wav", "flac": "16-bit FLAC (now)"}
# --quick: the tests' tiny config, a few steps
TINY = {"n_fft": 256, "hop_length": 64, "num_frame": 16, "n_blocks": 5, "internal_channels": 8, "n_internal_layers": 2}
TINY.update(bn_factor=4, min_bn_units=4, num_tdfs=4, dk=8, embedding_dim=8)


def demo_overrides() -> dict:
    from lightsaft.study.studies import load_study

    return load_study(Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml").overrides


def train_demo(root: Path, quick: bool) -> tuple[Path, Path, dict]:
    """The two excerpts as a MUSDB18 folder (80s Rock for training, a copy of it for validation,
    Falcon 69 for test), prepared, and a demo-config model trained on them; returns the paths of
    weights.pt and best.ckpt and the params."""
    from lightsaft.config import defaults, validate
    from lightsaft.download import download
    from lightsaft.prepare import prepare
    from lightsaft.schema import set_dotted
    from lightsaft.train import TrainOutputs, train, write_outputs

    tree = root / "musdb"
    for split, name, source in (("train", TRAIN, TRAIN), ("train", f"{TRAIN} (valid)", TRAIN), ("test", TEST, TEST)):
        (tree / split).mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / "musdb" / "musdb18-7" / split / f"{source}.stem.mp4", tree / split / f"{name}.stem.mp4")
    params = defaults()
    for key, value in demo_overrides().items():
        if key.startswith(("model.", "train.", "trainer.", "runtime.")):
            set_dotted(params, key, value)
    if quick:
        params["model"].update(TINY)
    params["data"].update(source="musdb18", root=str(tree), valid_tracks=[f"{TRAIN} (valid)"])
    set_dotted(params, "train.items_per_epoch", 16 if quick else 400)
    set_dotted(params, "train.valid_chunks_per_track", 1 if quick else 4)
    set_dotted(params, "trainer.max_epochs", 1 if quick else 4)
    params = validate(params)
    raw = download(params["data"], root / "data" / "raw")
    cache = prepare(raw, root / "data" / "cache", params["model"]["n_fft"], params["model"]["hop_length"])
    (root / ".dvc").mkdir(exist_ok=True)  # the project the MLflow run is recorded in
    os.environ["DVC_ROOT"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    outputs = TrainOutputs.under(root)
    write_outputs(train(params, cache), outputs)
    return outputs.weights, outputs.checkpoint, params


def estimate_rates(weights: Path, folder: Path, quick: bool) -> dict[str, float]:
    """Bytes per second of audio (all four targets of a stereo track) in each format."""
    from lightsaft.data.audio import read_audio
    from lightsaft.separation.estimates import load_model
    from lightsaft.separation.track import separate_track
    from lightsaft.separation.writer import AudioWriter
    from lightsaft.spectral import SAMPLE_RATE, TARGETS

    model = load_model(weights)
    sizes, seconds = dict.fromkeys(FORMATS, 0), 0.0
    for split, track in (("train", TRAIN), ("test", TEST)):
        mixture, _ = read_audio(SHARED / "musdb" / "musdb18-7" / split / f"{track}.stem.mp4")
        estimates = separate_track(model, mixture, device="cpu", overlap=0.0 if quick else 0.5)
        seconds += len(mixture) / SAMPLE_RATE
        for fmt in FORMATS:
            for target in TARGETS:
                with AudioWriter(folder / fmt / track, target, SAMPLE_RATE, 2, fmt) as writer:
                    writer.write(estimates[target])
                sizes[fmt] += writer.path.stat().st_size
    return {fmt: size / seconds for fmt, size in sizes.items()}


def core_checkpoint_bytes(model, folder: Path) -> int:
    """The bulk of a Lightning checkpoint of ``model``: its state_dict and Adam's state (two
    float32 tensors per parameter), saved as torch.save saves them."""
    import torch

    optimizer = torch.optim.Adam(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()  # Adam's state exists after a step
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}, folder / "core.ckpt")
    return (folder / "core.ckpt").stat().st_size


def seed_sizes(folder: Path) -> tuple[int, int, int]:
    """The seed config: (parameters, weights.pt bytes, checkpoint bulk bytes); sizes do not depend on the values."""
    from lightsaft.config import defaults
    from lightsaft.model.unet import build_model, count_parameters
    from lightsaft.weights.ours import save_weights

    model = build_model(defaults()["model"])
    save_weights(folder / "seed.pt", model, defaults()["model"])
    return count_parameters(model), (folder / "seed.pt").stat().st_size, core_checkpoint_bytes(model, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="separate with this weights file instead of training one")
    parser.add_argument("--quick", action="store_true", help="smoke run: the tiny config, a few training steps")
    args = parser.parse_args()
    if not (SHARED / "musdb" / "musdb18-7").is_dir():
        sys.exit(f"{SHARED / 'musdb' / 'musdb18-7'}: not found; set LIGHTSAFT_SHARED to the folder holding musdb/")
    from lightsaft.model.unet import count_parameters
    from lightsaft.separation.estimates import load_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = None
        if args.weights is None:
            args.weights, checkpoint, _ = train_demo(tmp / "project", args.quick)
        rates = estimate_rates(args.weights, tmp / "estimates", args.quick)
        model = load_model(args.weights)
        params, weights_size = count_parameters(model), args.weights.stat().st_size
        ckpt_size = checkpoint.stat().st_size if checkpoint else None
        overhead = ckpt_size - core_checkpoint_bytes(model, tmp) if checkpoint else None  # Lightning's own
        seed_params, seed_size, seed_core = seed_sizes(tmp)

    print("estimates: two real MUSDB18 excerpts, 4 stereo targets each, separated by the model")
    print(f"{'format':24}{'kB per s of audio':>19}{'vs float32':>12}{'test set GB':>13}")
    for fmt, label in FORMATS.items():
        print(
            f"{label:24}{rates[fmt] / 1e3:19.1f}{rates[fmt] / rates['float']:12.3f}"
            f"{rates[fmt] * TEST_SET_SECONDS / 1e9:13.2f}"
        )
    print("\ncheckpoints (best.ckpt of the seed config: its weights and Adam state saved, plus the trained one's rest)")
    print(f"{'model':24}{'parameters':>12}{'weights.pt MB':>15}{'B/param':>9}{'best.ckpt MB':>14}{'B/param':>9}")
    rows = [("trained (measured)", params, weights_size, ckpt_size)]
    rows.append(("seed", seed_params, seed_size, seed_core + overhead if checkpoint else None))
    for label, count, weights, ckpt in rows:
        ckpt_text = f"{ckpt / 1e6:14.1f}{ckpt / count:9.2f}" if ckpt else f"{'-':>14}{'-':>9}"
        print(f"{label:24}{count:12,}{weights / 1e6:15.2f}{weights / count:9.2f}{ckpt_text}")
    if checkpoint:
        kept = seed_size + rows[1][3]
        before, after = rates["float"] * TEST_SET_SECONDS + kept, rates["flac"] * TEST_SET_SECONDS + kept
        print(
            f"\nper point at the seed config (test set {TEST_SET_SECONDS / 3600:g} h + weights.pt + best.ckpt): "
            f"{before / 1e9:.1f} GB before (float32 wav), {after / 1e9:.1f} GB after (16-bit FLAC)"
        )


if __name__ == "__main__":
    main()
