"""Importing the official LaSAFT / LightSAFT checkpoints: golden outputs, safe unpickling, refusals, downloads."""

from __future__ import annotations

import fractions
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_project, shared_path

from lightsaft.cli import main
from lightsaft.model.unet import build_model, count_parameters
from lightsaft.paths import file_sha256
from lightsaft.weights.official import (
    WINDOW_KEY,
    CheckpointError,
    detect_variant,
    load_checkpoint,
    model_params,
    network_state,
)
from lightsaft.weights.official_keys import load_official_state_dict
from lightsaft.weights.ours import load_weights
from lightsaft.weights.published import PUBLISHED, URL_ENV, PretrainedError, Published, import_official, published_model

# fixture -> the golden folder whose network it holds
FIXTURES = {
    "lasaft_tiny.ckpt": "lasaft_tiny",
    "lasaft_tiny_legacy_format.ckpt": "lasaft_tiny",
    "lightsaft_tiny_2020_prefix.ckpt": "lightsaft_tiny",
}


def fixture(name: str) -> Path:
    return shared_path("reference", "official_ckpt", name)


def golden(name: str) -> dict:
    return torch.load(shared_path("reference", name, "golden.pt"), weights_only=True)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project root of its own: the pretrained cache lands in ``<root>/.lightsaft/pretrained``."""
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("DVC_ROOT", str(root))
    return root


def outputs(model, gold: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval output, and train output with dropout off (as the golden files were made)."""
    with torch.no_grad():
        evaluated = model.eval()(gold["input_spec"], gold["condition"])
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        trained = model(gold["input_spec"], gold["condition"])
    return evaluated, trained


def check_golden(weights: Path, gold_name: str, label: str) -> None:
    gold = golden(gold_name)
    model = load_weights(weights)
    assert count_parameters(model) == gold["param_count"]
    evaluated, trained = outputs(model, gold)
    print(
        f"{label}: {model.params['variant']}, {count_parameters(model):,} params, max error eval "
        f"{(evaluated - gold['output_eval']).abs().max():.2g}, train {(trained - gold['output_train']).abs().max():.2g}"
    )
    torch.testing.assert_close(evaluated, gold["output_eval"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trained, gold["output_train"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Every fixture imports and reproduces its golden outputs
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_imports_and_reproduces_golden(name, tmp_path):
    imported = import_official(fixture(name), tmp_path / "weights.pt")
    assert imported.official.params["variant"] == FIXTURES[name].split("_")[0]
    assert imported.official.training_keys == ["optimizer", "lr", "auto_lr_schedule", "train_loss", "val_loss"]
    assert imported.official.unknown_keys == []
    assert imported.sha256 == file_sha256(fixture(name))
    check_golden(tmp_path / "weights.pt", FIXTURES[name], name)


@pytest.mark.parametrize("name", FIXTURES)
def test_cli_import_into_the_project_cache(name, project, capsys):
    assert main(["import-official", str(fixture(name))]) == 0
    out = capsys.readouterr().out
    sha256 = file_sha256(fixture(name))
    weights = project / ".lightsaft" / "pretrained" / f"{Path(name).stem}-{sha256[:12]}.pt"
    variant = FIXTURES[name].split("_")[0]
    count = golden(FIXTURES[name])["param_count"]
    for expected in (f"sha256 {sha256}", f"variant {variant}, {count:,} parameters", "n_fft=256", str(weights)):
        assert expected in out
    check_golden(weights, FIXTURES[name], f"{name} (CLI)")


def test_lasaft_large_listing_maps_onto_the_large_config():
    """The real checkpoints' 543 keys and shapes fill our model built from the published large config."""
    state = {}
    for line in shared_path("reference", "state_dict_keys_lasaft_large_framework.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        state[key] = torch.empty(eval(shape), dtype=getattr(torch, dtype.removeprefix("torch.")), device="meta")
    network = network_state(state, "listing")
    assert len(network) == len(state) - 1  # the STFT window is left out
    large = {key: value for key, value in published_model("lasaft_large_2021").items() if key != "variant"}
    large.update(tif_init_mode=None, lr=1e-4)  # a real checkpoint's extra hyper-parameters
    params, training, unknown = model_params(large, detect_variant(list(network), "listing"), "listing")
    assert params["variant"] == "lasaft" and training == ["lr"] and unknown == ["tif_init_mode"]
    with torch.device("meta"):
        model = build_model(params)
    load_official_state_dict(model, network)  # strict: every key used, every parameter filled
    assert count_parameters(model) == 31_541_908


# ---------------------------------------------------------------------------------------
# Refusals: a clear error, nothing written
def payload_of(name: str = "lasaft_tiny.ckpt") -> dict:
    """A fixture's content, to be changed and saved again (its callback stand-ins cannot be pickled)."""
    return dict(load_checkpoint(fixture(name)), callbacks={})


class Opens:
    """Unpickling this opens (creates) a file: code that a checkpoint must not get to run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def assert_refused(source: Path, tmp_path: Path, message: str, **kwargs) -> None:
    out = tmp_path / "out" / "weights.pt"
    with pytest.raises(CheckpointError, match=message):
        import_official(source, out, **kwargs)
    assert not out.parent.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_that_runs_code_is_refused(tmp_path, zip_format):
    marker = tmp_path / "code-ran"
    payload = payload_of()
    payload["callbacks"] = {"evil": Opens(marker)}
    path = tmp_path / "evil.ckpt"
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    assert_refused(path, tmp_path, r"evil\.ckpt: refused to load: its pickle names \S*open\b.*--trust")
    assert not marker.exists()


def test_trust_loads_other_globals_and_says_so(tmp_path, capsys):
    payload = payload_of()
    payload["hyper_parameters"]["lr"] = fractions.Fraction(1, 1000)  # a global the safe loader refuses
    path = tmp_path / "fraction.ckpt"
    torch.save(payload, path)
    assert_refused(path, tmp_path, "its pickle names fractions.Fraction")
    assert main(["import-official", str(path), "--out", str(tmp_path / "w.pt"), "--trust"]) == 0
    assert "--trust: loaded with full unpickling" in capsys.readouterr().out
    check_golden(tmp_path / "w.pt", "lasaft_tiny", "trusted")


@pytest.mark.parametrize("name", ["lasaft_tiny.ckpt", "lasaft_tiny_legacy_format.ckpt"])
def test_truncated_file_is_refused(tmp_path, name):
    data = fixture(name).read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, tmp_path, "truncated.ckpt: not a readable checkpoint")


@pytest.mark.parametrize("window", [torch.hann_window(256, periodic=False), torch.hamming_window(256)])
def test_other_stft_window_is_refused(tmp_path, window):
    payload = payload_of()
    payload["state_dict"][WINDOW_KEY] = window
    path = tmp_path / "window.ckpt"
    torch.save(payload, path)
    assert_refused(path, tmp_path, f"{WINDOW_KEY} is not the periodic Hann window of n_fft = 256")


def test_state_dict_of_another_config_names_the_first_mismatch(tmp_path):
    payload = payload_of()
    payload["hyper_parameters"]["dk"] = 16  # the weights were trained with dk 8
    path = tmp_path / "other.ckpt"
    torch.save(payload, path)
    assert_refused(
        path, tmp_path, r"first mismatch at encoders\.0\.keys: official \(8, 4\) vs ours \(16, 4\)(?s:.*)shape mismatch"
    )


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: p["state_dict"].update(extra=torch.zeros(1)), "unexpected state_dict key 'extra'"),
        (lambda p: p["hyper_parameters"].pop("num_tdfs"), "lack the model arguments num_tdfs"),
        (lambda p: p.pop("hyper_parameters"), "no 'hyper_parameters' in the checkpoint"),
        (lambda p: p["state_dict"].pop(WINDOW_KEY), f"no {WINDOW_KEY}"),
    ],
)
def test_malformed_checkpoints_are_named(tmp_path, change, message):
    payload = payload_of()
    change(payload)
    path = tmp_path / "malformed.ckpt"
    torch.save(payload, path)
    assert_refused(path, tmp_path, re.escape(message))


# ---------------------------------------------------------------------------------------
# Published names: download, verify, record, reuse
@pytest.fixture
def published(server, project, monkeypatch):
    """The loopback server stands in for the authors' host."""
    monkeypatch.setenv(URL_ENV, server.url)
    return server


def cache(project: Path) -> Path:
    return project / ".lightsaft" / "pretrained"


def test_download_whose_hash_differs_is_refused(published, project):
    published.files["/lasaft_large_2020.ckpt"] = fixture("lasaft_tiny.ckpt").read_bytes()
    expected = PUBLISHED["lasaft_large_2020"].sha256
    with pytest.raises(PretrainedError, match=f"but {expected} was published by the authors; the download was deleted"):
        import_official("lasaft_large_2020")
    assert not (cache(project) / "downloads" / "lasaft_large_2020.ckpt").exists()
    assert not (cache(project) / "lasaft_large_2020.pt").exists()
    assert not (cache(project) / "sha256.json").exists()


def test_published_hash_is_verified(published, project, monkeypatch, capsys):
    data = fixture("lightsaft_tiny_2020_prefix.ckpt").read_bytes()
    published.files["/lightsaft_small_2020.ckpt"] = data
    sha256 = file_sha256(fixture("lightsaft_tiny_2020_prefix.ckpt"))
    monkeypatch.setitem(
        PUBLISHED, "lightsaft_small_2020", Published(sha256, "1 MB", PUBLISHED["lightsaft_small_2020"].model)
    )
    assert main(["import-official", "lightsaft_small_2020"]) == 0
    assert f"sha256 {sha256} (verified: published by the authors)" in capsys.readouterr().out
    check_golden(cache(project) / "lightsaft_small_2020.pt", "lightsaft_tiny", "published")
    assert not (cache(project) / "sha256.json").exists()  # nothing to record: the hash is published


def test_trust_on_first_use_then_pinned_and_recorded(published, project, capsys):
    first = fixture("lasaft_tiny.ckpt")
    published.files["/lasaft_large_2021.ckpt"] = first.read_bytes()
    assert main(["import-official", "lasaft_large_2021"]) == 0
    assert "(trust on first use: no published hash; recorded in" in capsys.readouterr().out
    record = cache(project) / "sha256.json"
    assert json.loads(record.read_text()) == {"lasaft_large_2021": file_sha256(first)}
    check_golden(cache(project) / "lasaft_large_2021.pt", "lasaft_tiny", "first use")

    # The file changes upstream: a later download must match what was recorded.
    other = fixture("lasaft_tiny_legacy_format.ckpt")
    published.files["/lasaft_large_2021.ckpt"] = other.read_bytes()
    (cache(project) / "downloads" / "lasaft_large_2021.ckpt").unlink()
    before = (cache(project) / "lasaft_large_2021.pt").stat().st_mtime_ns
    with pytest.raises(PretrainedError, match="recorded on first use"):
        import_official("lasaft_large_2021")
    assert (cache(project) / "lasaft_large_2021.pt").stat().st_mtime_ns == before
    assert not (cache(project) / "downloads" / "lasaft_large_2021.ckpt").exists()

    # --sha256 pins the hash the user expects.
    assert main(["import-official", "lasaft_large_2021", "--sha256", file_sha256(other)]) == 0
    assert "(verified: pinned with --sha256)" in capsys.readouterr().out


def test_offline_error_gives_the_url_and_the_manual_steps(project, monkeypatch):
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/assets")  # discard port: nothing listens
    with pytest.raises(PretrainedError) as error:
        import_official("lasaft_large_2019")
    text = str(error.value)
    dest = cache(project) / "downloads" / "lasaft_large_2019.ckpt"
    assert "http://127.0.0.1:9/assets/lasaft_large_2019.ckpt" in text
    assert f"save it as {dest}" in text and "lightsaft import-official FILE" in text
    assert not (cache(project) / "lasaft_large_2019.pt").exists()


def test_manual_download_is_verified_and_imported(project, monkeypatch):
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/assets")
    dest = cache(project) / "downloads" / "lasaft_large_2019.ckpt"
    dest.parent.mkdir(parents=True)
    shutil.copy(fixture("lasaft_tiny.ckpt"), dest)
    imported = import_official("lasaft_large_2019")
    assert imported.out == cache(project) / "lasaft_large_2019.pt" and "trust on first use" in imported.verified


def test_bad_sha256_argument_is_named(tmp_path):
    with pytest.raises(PretrainedError, match="expected 64 hexadecimal digits"):
        import_official(fixture("lasaft_tiny.ckpt"), tmp_path / "w.pt", sha256="abc")
    with pytest.raises(PretrainedError, match="does not match --sha256"):
        import_official(fixture("lasaft_tiny.ckpt"), tmp_path / "w.pt", sha256="0" * 64)
    assert not (tmp_path / "w.pt").exists()
