"""Importing the official LaSAFT / LightSAFT checkpoints: golden outputs, safe unpickling, refusals, downloads."""

from __future__ import annotations

import fractions
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
from lightsaft.weights.ours import load_weights, save_weights, source_sha256
from lightsaft.weights.published import (
    PUBLISHED,
    URL_ENV,
    PretrainedError,
    Published,
    default_min_trim,
    import_official,
    published_model,
)
from lightsaft.weights.resolve import resolve_model

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
    assert imported.official.training.hyper_parameters == {
        "optimizer": "adam",
        "lr": 0.001,
        "auto_lr_schedule": True,
        "train_loss": "spec_mse",
        "val_loss": "raw_l1",
    }
    assert imported.sha256 == file_sha256(fixture(name)) == source_sha256(tmp_path / "weights.pt")
    check_golden(tmp_path / "weights.pt", FIXTURES[name], name)


@pytest.mark.parametrize("name", FIXTURES)
def test_cli_import_into_the_project_cache(name, project, capsys):
    assert main(["import-official", str(fixture(name))]) == 0
    out = capsys.readouterr().out
    sha256 = file_sha256(fixture(name))
    weights = project / ".lightsaft" / "pretrained" / f"{Path(name).stem}-{sha256[:12]}.pt"
    variant = FIXTURES[name].split("_")[0]
    count = golden(FIXTURES[name])["param_count"]
    for expected in (
        f"sha256 {sha256}",
        f"variant {variant}, {count:,} parameters",
        "n_fft=256",
        str(weights),
        # how it was trained, with the values the fixtures hold
        "hyper-parameters: lr=0.001, optimizer='adam', auto_lr_schedule=True\n",
        "not recorded: batch_size, seed, gpus, precision, patience\n",
        "saved at epoch 417, global step 1459500",
        "LR scheduler: ReduceLROnPlateau mode='min', factor=0.5, patience=50,",
        "EarlyStopping: wait_count=12, stopped_epoch=0, best_score=0.01234, patience=300\n",
        "ModelCheckpoint: monitor='val_loss', best_model_score=0.01234, best_model_path='/home/user/lasaft/etc/"
        "checkpoints/epoch=417.ckpt'",
    ):
        assert expected in out
    check_golden(weights, FIXTURES[name], f"{name} (CLI)")


def test_an_argparse_era_checkpoint_tells_how_it_was_trained(tmp_path, capsys):
    """The official argparse trainer passed every command-line option to the framework, which saved all
    of them; pytorch-lightning 1.1.6 dropped its EarlyStopping (``early_stop_callback``), so such a file
    holds a ModelCheckpoint state and none of early stopping. Values as the Table-2 command gives them."""
    from pytorch_lightning.callbacks import ModelCheckpoint  # pickled by name: loaded as an inert stand-in

    payload = payload_of()
    command = {"batch_size": 4, "seed": 2020, "gpus": 4, "precision": 16, "patience": 10, "save_top_k": 3}
    command |= {"distributed_backend": "ddp", "sync_batchnorm": True, "max_epochs": 1000}
    payload["hyper_parameters"].update(lr=0.0001, musdb_root="../repos/musdb18_wav", tif_init_mode=None, **command)
    payload["callbacks"] = {ModelCheckpoint: {"monitor": "val_loss", "best_model_score": torch.tensor(0.5)}}
    payload["lr_schedulers"][0].update(factor=0.1, best=0.5, num_bad_epochs=7, _last_lr=[1e-5])
    payload["optimizer_states"][0]["param_groups"][0]["lr"] = 1e-5
    payload["native_amp_scaling_state"] = {"scale": 32768.0, "growth_factor": 2.0}
    path = tmp_path / "argparse.ckpt"
    torch.save(payload, path)
    assert main(["import-official", str(path), "--out", str(tmp_path / "w.pt")]) == 0
    out = capsys.readouterr().out
    for expected in (
        "hyper-parameters: lr=0.0001, batch_size=4, seed=2020, gpus=4, precision=16, patience=10, optimizer='adam', "
        "auto_lr_schedule=True, distributed_backend='ddp', sync_batchnorm=True, save_top_k=3, max_epochs=1000, "
        "musdb_root='../repos/musdb18_wav'\n",
        "other hyper-parameters: train_loss='spec_mse', val_loss='raw_l1', tif_init_mode=None\n",
        "optimizer learning rate at the save: 1e-05\n",
        "AMP loss scaler state saved: trained in fp16 mixed precision\n",
        "ReduceLROnPlateau mode='min', factor=0.1, patience=50, threshold=0.0001, threshold_mode='rel', cooldown=0, "
        "min_lrs=0, best=0.5, num_bad_epochs=7, _last_lr=1e-05\n",
        "ModelCheckpoint: monitor='val_loss', best_model_score=0.5\n",
        "EarlyStopping: no state saved beside the other callbacks': early stopping did not run\n",
    ):
        assert expected in out
    assert "not recorded" not in out
    check_golden(tmp_path / "w.pt", "lasaft_tiny", "argparse-era")


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
    params, others = model_params(large, detect_variant(list(network), "listing"), "listing")
    assert params["variant"] == "lasaft" and others == {"tif_init_mode": None, "lr": 1e-4}
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


def test_every_published_checkpoint_is_pinned_to_the_authors_hash():
    """The sha256 and size of each file, as the authors' Git LFS pointers give them (gathered in the
    fixtures' README): nothing is trusted on first use."""
    facts = shared_path("reference", "official_ckpt", "README.md").read_text()
    for name, published in PUBLISHED.items():
        match = re.search(rf"`{name}(?:\.ckpt)?`: ([\d,]+) bytes, sha256 `([0-9a-f]{{64}})`", facts)
        if name == "lightsaft_small_2020":  # its row has the other layout: size, then hash
            match = re.search(r"\| ([\d,]+) bytes, sha256 `([0-9a-f]{64})` \(Git LFS pointer in ws-choi/music", facts)
        assert match, name
        assert (published.size, published.sha256) == (f"{match[1]} bytes", match[2]), name


def test_a_download_must_have_the_published_hash_unless_pinned(published, project, capsys):
    other = fixture("lasaft_tiny.ckpt")
    published.files["/lasaft_large_2021.ckpt"] = other.read_bytes()
    with pytest.raises(PretrainedError, match=f"but {PUBLISHED['lasaft_large_2021'].sha256} was published by the"):
        import_official("lasaft_large_2021")
    assert not (cache(project) / "downloads" / "lasaft_large_2021.ckpt").exists()
    assert not (cache(project) / "lasaft_large_2021.pt").exists()
    # --sha256 pins the hash the user expects instead
    assert main(["import-official", "lasaft_large_2021", "--sha256", file_sha256(other)]) == 0
    assert "(verified: pinned with --sha256)" in capsys.readouterr().out
    check_golden(cache(project) / "lasaft_large_2021.pt", "lasaft_tiny", "pinned")


def test_a_published_model_is_known_in_every_form(published, project, monkeypatch, capsys):
    """Its name, its .ckpt under any name, and our weights file imported from it are the same model:
    the per-model defaults (the MDX kit's trim) follow the checkpoint's sha256, not the string."""
    source = fixture("lightsaft_tiny_2020_prefix.ckpt")
    sha256 = file_sha256(source)
    monkeypatch.setitem(PUBLISHED, "lightsaft_small_2020", Published(sha256, "1 MB", {}))
    published.files["/lightsaft_small_2020.ckpt"] = source.read_bytes()
    shutil.copy(source, project / "my copy.ckpt")
    import_official(source, project / "elsewhere.pt")  # our weights file, imported from it
    model = load_weights(project / "elsewhere.pt")
    save_weights(project / "trained.pt", model, model.params)  # the same weights, but nothing says whose
    for reference in ("lightsaft_small_2020", "my copy.ckpt", "elsewhere.pt"):
        resolved = resolve_model(reference, base=project)
        assert resolved.published == "lightsaft_small_2020", reference
        assert default_min_trim(resolved.published) == 8192
    verified = resolve_model("my copy.ckpt", base=project).verified
    assert verified == "verified: lightsaft_small_2020, published by the authors"
    assert resolve_model("trained.pt", base=project).published is None and default_min_trim(None) == 5000

    # The imported copy of the name is reused, unless it does not name its source (an older import): then
    # the checkpoint is verified and imported again.
    requests = len(published.requests)
    resolve_model("lightsaft_small_2020")
    assert len(published.requests) == requests
    imported = cache(project) / "lightsaft_small_2020.pt"
    save_weights(imported, load_weights(imported), load_weights(imported).params)  # as an older version wrote it
    assert source_sha256(imported) is None
    assert resolve_model("lightsaft_small_2020").published == "lightsaft_small_2020"
    assert source_sha256(imported) == sha256 and "imported lightsaft_small_2020" in capsys.readouterr().out


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
    monkeypatch.setitem(PUBLISHED, "lasaft_large_2019", Published(file_sha256(dest), "3 MB", {}))
    imported = import_official("lasaft_large_2019")
    assert (
        imported.out == cache(project) / "lasaft_large_2019.pt"
        and imported.verified == "verified: published by the authors"
    )


def test_bad_sha256_argument_is_named(tmp_path):
    with pytest.raises(PretrainedError, match="expected 64 hexadecimal digits"):
        import_official(fixture("lasaft_tiny.ckpt"), tmp_path / "w.pt", sha256="abc")
    with pytest.raises(PretrainedError, match="does not match --sha256"):
        import_official(fixture("lasaft_tiny.ckpt"), tmp_path / "w.pt", sha256="0" * 64)
    assert not (tmp_path / "w.pt").exists()
