"""A user's mistakes get one clear error that names the key/file/value and what to do, and
nothing half-written: params files, data folders, weights files, trainer settings, songs."""

from __future__ import annotations

import ast
import errno
import os
import pickle
import re
import runpy
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import REPO, TINY_MODEL, make_project, require_ffmpeg, tiny_params

from lightsaft.cli import main
from lightsaft.download import download
from lightsaft.errors import ConfigError, DataError, WeightsError
from lightsaft.model.unet import build_model
from lightsaft.stage import run_stage
from lightsaft.tracking import records
from lightsaft.train import train
from lightsaft.weights.ours import load_state_dict_checked, load_weights, save_weights


def run_stage_script(stage: str, *args: str) -> int:
    """``pipeline/<stage>.py args`` in this process (the real script, without an interpreter
    start-up per case); returns its exit code."""
    previous = signal.getsignal(signal.SIGTERM)  # run_stage installs its SIGTERM handler
    argv = sys.argv
    sys.argv = [f"pipeline/{stage}.py", *args]
    try:
        runpy.run_path(str(REPO / "pipeline" / f"{stage}.py"), run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, previous)


# One bad params.yaml per case, each through a different stage script (every one validates the
# whole file before doing anything).
BAD_PARAMS = [
    ("download", "model: {dkk: 32}\n", "unknown key model.dkk; valid keys under model: variant, n_fft"),
    ("prepare", "model: {dk: thirty-two}\n", "model.dk = 'thirty-two': expected an integer"),
    ("train", "model: {dk: 0}\n", "model.dk = 0: must be >= 1"),
    ("separate", "model: {num_frame: 100}\n", "model.num_frame = 100: must be divisible by 2**4 = 16"),
    ("evaluate", "model: {n_fft: 4000}\n", "model.n_fft = 4000: must be a power of two"),
    ("report", "model: {variant: lasaft2}\n", "model.variant = 'lasaft2': must be one of 'lightsaft', 'lasaft'"),
    ("download", "data: {source: musdb19}\n", "data.source = 'musdb19': must be one of 'musdb18'"),
    ("train", "train: {train_loss: mse}\n", "train.train_loss = 'mse': must be one of 'spec_mse'"),
    ("train", "trainer: {batch_size: 1}\n", "trainer.batch_size = 1: must be >= 2 (BatchNorm cannot train"),
    ("train", "trainer: {max_epochs: ten}\n", "trainer.max_epochs = 'ten': expected an integer"),
    ("evaluate", "evaluate: {engine: museval2}\n", "evaluate.engine = 'museval2': must be one of 'fast', 'museval'"),
    ("prepare", "model: {dk: 32\n", "not valid YAML at line 2, column 1: expected ',' or '}'"),
    ("separate", "- model\n", "the file must be a mapping of keys, got list"),
    # rules between keys run at validation too, before any stage works (they named the keys too late before)
    (
        "download",
        "separate: {protocol: official, overlap: 0.8}\n",
        "separate.overlap = 0.8: the official protocol takes 0 to 0.5",
    ),
    ("prepare", "separate: {protocol: official, min_trim: 100}\n", "separate.min_trim = 100: the official protocol"),
    (
        "train",
        "model: {hop_length: 64, num_frame: 16, n_fft: 256, n_blocks: 5}\nseparate: {protocol: official}\n",
        "separate.min_trim = 5000: the official protocol trims 5056 samples at each side of a 960-sample window",
    ),
    ("evaluate", "separate: {precision: fp8}\n", "separate.precision = 'fp8': must be one of 'float32', 'bf16'"),
    ("report", "report: {excerpt_seconds: 0}\n", "report.excerpt_seconds = 0: must be > 0"),
    ("train", "trainer: {accelerator: cpu, sync_batchnorm: true}\n", "trainer.sync_batchnorm = True: with trainer"),
]


@pytest.mark.parametrize("stage,content,message", BAD_PARAMS, ids=[m.split(":")[0] for *_, m in BAD_PARAMS])
def test_bad_params_stop_every_stage_with_one_line(tmp_path, monkeypatch, capsys, stage, content, message):
    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    (root / "bad.yaml").write_text(content)
    code = run_stage_script(stage, "--params", "bad.yaml")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {stage}: bad.yaml: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in root.iterdir()) == [".dvc", "bad.yaml"]  # nothing written


@pytest.mark.parametrize(
    "override,message",
    [
        ({"trainer.accelerator": "mps"}, "trainer settings accelerator='mps', devices=1"),
        ({"train.items_per_epoch": 4}, "trainer.batch_size = 8 is larger than an epoch (4 items)"),
    ],
)
def test_trainer_settings_this_machine_cannot_run_leave_no_mlflow_run(
    tmp_path, monkeypatch, synthetic_cache, override, message
):
    if override.get("trainer.accelerator") == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    root = make_project(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(tiny_params(**override), synthetic_cache)
    assert not (root / "mlflow.db").exists() and not (root / ".lightsaft" / "train").exists()
    assert not (root / "models").exists()


# ---------------------------------------------------------------------------------------
# Data
def test_empty_data_folders_say_what_is_expected(tmp_path):
    data = dict(tiny_params()["data"], source="musdb18", root=str(tmp_path / "musdb18"))
    (tmp_path / "musdb18").mkdir()
    with pytest.raises(DataError, match=r"musdb18 not found at data.root = .*musdb18'.*train/\*.stem.mp4"):
        download(data, tmp_path / "raw")
    for split in ("train", "test"):
        (tmp_path / "musdb18" / split).mkdir()
    with pytest.raises(DataError, match=r"musdb18/train: no .stem.mp4 files found"):
        download(data, tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []


def test_corrupt_stem_mp4_stops_prepare_naming_it(tmp_path, monkeypatch, capsys):
    require_ffmpeg()
    root = make_project(tmp_path / "project")
    tree = tmp_path / "musdb18"
    for split, name in (("train", "A"), ("train", "B"), ("test", "C")):
        (tree / split).mkdir(parents=True, exist_ok=True)
        (tree / split / f"{name}.stem.mp4").write_bytes(os.urandom(4096))
    monkeypatch.chdir(root)
    (root / "params.yaml").write_text(f"data: {{source: musdb18, root: {tree}, valid_tracks: [B]}}\n")
    assert run_stage_script("download") == 0  # a local folder: only listed, not decoded
    code = run_stage_script("prepare")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: prepare: ") and "A.stem.mp4: cannot read audio" in err, err
    assert sorted(p.name for p in (root / "data").iterdir()) == ["raw"]  # no cache, no temporary folder


def test_disk_full_while_writing_the_cache(tmp_path, monkeypatch, capsys, synthetic_cache):
    """Enough space at the start (the up-front check passes), then the disk fills up."""
    root = make_project(tmp_path)
    (root / "data").mkdir()
    os.symlink(synthetic_cache.parent / "raw", root / "data" / "raw")
    (root / "params.yaml").write_text(
        "model: {n_fft: 256, hop_length: 64, num_frame: 16, n_blocks: 5}\nruntime: {prepare: {jobs: 1}}\n"
    )  # one job: the disk fills up in this process
    open_memmap = np.lib.format.open_memmap
    written = []

    def fills_up(path, *args, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(path)
        return open_memmap(path, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", fills_up)
    monkeypatch.chdir(root)
    code = run_stage_script("prepare")
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "free some space and run it again" in err
    assert "spec/0001.npy" in err  # names the file it could not write
    # no cache; the work folder keeps the finished tracks for the next run (hidden, not an output)
    assert sorted(p.name for p in (root / "data").iterdir()) == [".cache.tmp", "raw"]


# ---------------------------------------------------------------------------------------
# Weights
def _weights(path: Path, **changes) -> Path:
    params = dict(TINY_MODEL, **changes)
    torch.manual_seed(0)
    save_weights(path, build_model(params), params)
    return path


def test_weights_of_another_config_name_the_key_and_both_configs(tmp_path):
    payload = torch.load(_weights(tmp_path / "dk16.pt", dk=16, num_tdfs=8), weights_only=True)
    model = build_model(TINY_MODEL)
    with pytest.raises(WeightsError) as error:
        load_state_dict_checked(model, payload["state_dict"], "dk16.pt", source_params=payload["model_params"])
    message = str(error.value)
    assert (
        "first mismatch at net.encoders.0.saft.bottleneck.linear.weight: file (256, 128) vs model (128, 128)" in message
    ), message
    assert "model config of the file vs this model: num_tdfs 8 vs 4, dk 16 vs 8" in message

    # A weights file whose model_params were edited no longer describes its tensors.
    payload["model_params"] = dict(TINY_MODEL)
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(
        WeightsError,
        match=r"edited.pt: .*first mismatch at net.encoders.0.saft.bottleneck.*"
        r"model_params are this model's config.*re-export",
    ):
        load_weights(tmp_path / "edited.pt")


class RunsCode:
    """What a malicious pickle holds: unpickling it calls a function of the author's choice."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["text", "empty", "tensor", "lightning checkpoint", "code"])
def test_files_that_are_not_weights_are_refused(tmp_path, kind, capsys):
    path, marker = tmp_path / "weights.pt", tmp_path / "pwned"
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "empty":
        path.touch()
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "lightning checkpoint":
        torch.save({"epoch": 3, "state_dict": build_model(TINY_MODEL).state_dict()}, path)
    else:
        payload = torch.load(_weights(path), weights_only=True)
        torch.save({**payload, "extra": RunsCode(marker)}, path)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)  # the file really does hold a code-running object
    with pytest.raises(WeightsError, match=r"weights.pt: not a LightSAFT weights file"):
        load_weights(path)
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros((4410, 2), dtype=np.float32), 44100)
    assert main(["separate", str(song), "--model", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: not a LightSAFT weights file")
    assert not marker.exists() and not (tmp_path / "out" / "song").exists()


def test_every_torch_load_refuses_code():
    """``torch.load`` and Lightning's checkpoint loading run pickled code unless told not to:
    every call in the code base passes ``weights_only=True``."""
    loaders = {"load", "fit", "load_from_checkpoint"}
    calls = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "pipeline").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        tree = ast.parse(path.read_text())
        # The one exception: import-official --trust, full unpickling the user asked for by name.
        trusted = {id(n) for f in ast.walk(tree) if getattr(f, "name", None) == "load_trusted" for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in trusted:
                continue
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in loaders:
                target = ast.unparse(node.func.value)
                if node.func.attr == "load" and target != "torch":
                    continue  # json.load, yaml.load, np.load ...
                if node.func.attr == "fit" and not any(k.arg == "ckpt_path" for k in node.keywords):
                    continue
                safe = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert len(calls) >= 3  # _latest_checkpoint, trainer.fit, _finish
    assert [where for where, safe in calls if not safe] == []


def test_corrupt_mlflow_run_record_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """evaluate and report find the training's MLflow run through models/mlflow_run.json."""
    monkeypatch.chdir(make_project(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mlflow_run.json").write_text('{"run_id": "abc"')  # cut short
    (tmp_path / "params.yaml").write_text("{}\n")
    with pytest.raises(SystemExit) as stopped:
        run_stage(
            "evaluate",
            lambda params, args: records.read_run_file("models/mlflow_run.json"),
            argv=[],
            handle_sigterm=False,
        )
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: evaluate: models/mlflow_run.json: corrupt MLflow run record"), err


# ---------------------------------------------------------------------------------------
# The separate command
def test_unsupported_song_format_is_named_and_the_others_still_run(tmp_path, capsys):
    weights = _weights(tmp_path / "weights.pt")
    (tmp_path / "notes.txt").write_text("la la la")
    (tmp_path / "song.mid").write_bytes(b"MThd\x00\x00\x00\x06")
    sf.write(tmp_path / "good.flac", np.zeros((2205, 2), dtype=np.float32), 44100)
    code = main(
        [
            "separate",
            str(tmp_path / "notes.txt"),
            str(tmp_path / "song.mid"),
            str(tmp_path / "good.flac"),
            "--model",
            str(weights),
            "--out",
            str(tmp_path / "out"),
            "--targets",
            "vocals",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "2 of 3 songs failed" in err
    assert "notes.txt: unsupported format .txt; use one of .aac, .aif, .aiff, .flac" in err
    assert "song.mid: unsupported format .mid" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]
