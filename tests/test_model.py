"""The model is the official LightSAFT / LaSAFT: golden tensors, parameter counts, API contract."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import TINY_MODEL, shared_path

from lightsaft.cli import main
from lightsaft.config import defaults
from lightsaft.errors import ConfigError
from lightsaft.model.params import MODEL
from lightsaft.model.unet import build_model, count_parameters
from lightsaft.spectral import SAMPLE_RATE
from lightsaft.weights.official_keys import load_official_state_dict
from lightsaft.weights.ours import load_weights, save_weights


def _golden(name: str) -> dict:
    return torch.load(shared_path("reference", name, "golden.pt"), weights_only=True)


def _official_model(golden: dict):
    model = build_model(MODEL.validate(golden["config"]))
    load_official_state_dict(model, golden["state_dict"])
    return model


def _report(label: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    err = (ours - ref).abs().max().item()
    print(f"{label}: max abs error {err:.3g} (|ref| max {ref.abs().max().item():.3g})")
    return err


@pytest.mark.parametrize("name", ["lightsaft_tiny", "lasaft_tiny"])
def test_golden_outputs(name):
    golden = _golden(name)
    model = _official_model(golden)
    assert count_parameters(model) == golden["param_count"]

    model.eval()
    with torch.no_grad():
        out = model(golden["input_spec"], golden["condition"])
    _report(f"{name} eval", out, golden["output_eval"])
    torch.testing.assert_close(out, golden["output_eval"], rtol=1e-5, atol=1e-5)

    # Train mode with dropout off: BatchNorm uses this batch's statistics.
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    with torch.no_grad():
        out = model(golden["input_spec"], golden["condition"])
    _report(f"{name} train", out, golden["output_train"])
    torch.testing.assert_close(out, golden["output_train"], rtol=1e-4, atol=1e-4)


def test_golden_intermediates_and_waveform():
    golden = _golden("lightsaft_tiny")
    model = _official_model(golden).eval()
    ref = golden["intermediates_eval"]
    net = model.net
    with torch.no_grad():
        embedding = net.embedding(golden["condition"])
        torch.testing.assert_close(embedding, ref["embedding"])
        torch.testing.assert_close(net.control.mlp(embedding), ref["condition_generator.dense_control_block"])
        gammas, betas = net.control(embedding)
        torch.testing.assert_close(gammas, ref["gammas_decoder"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(betas, ref["betas_decoder"], rtol=1e-5, atol=1e-5)
        first = net.first_conv(golden["input_spec"])
        torch.testing.assert_close(first, ref["first_conv"], rtol=1e-5, atol=1e-5)
        enc0 = net.encoders[0]
        tfc = enc0.tfc(first)
        torch.testing.assert_close(tfc, ref["encoders.0.tfc"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(enc0.saft.bottleneck(tfc), ref["encoders.0.LaSAFT_bn_layer"], rtol=1e-5, atol=1e-5)

    wave = golden["wave"]
    with torch.no_grad():
        spec = model.front.stft(wave["input_wave"])
        _report("stft", spec, wave["input_spec"])
        torch.testing.assert_close(spec, wave["input_spec"], rtol=1e-5, atol=1e-5)
        out = model.separate(wave["input_wave"], wave["condition"])
    _report("waveform", out, wave["output_wave"])
    torch.testing.assert_close(out, wave["output_wave"], rtol=1e-5, atol=1e-5)
    assert wave["sample_rate"] == SAMPLE_RATE  # the rate our front end and stages assume


def test_the_tests_tiny_config_builds_the_golden_model():
    """The tiny config every other test uses is validated and built by our code into exactly the
    model of the golden tensors: the official weights load strictly and give the golden output."""
    golden = _golden("lightsaft_tiny")
    model = build_model(MODEL.validate(TINY_MODEL))
    load_official_state_dict(model, golden["state_dict"])
    assert count_parameters(model) == golden["param_count"] == 71_988
    with torch.no_grad():
        out = model.eval()(golden["input_spec"], golden["condition"])
    torch.testing.assert_close(out, golden["output_eval"], rtol=1e-5, atol=1e-5)


def test_model_summary_command(tmp_path, capsys):
    """``lightsaft model-summary`` on a params file with the tiny model: the parameter count and
    each block's output shape, as the config implies (internal_channels = 8, num_frame = 16,
    n_fft = 256: the U-Net works on 128 of the 129 frequency bins, two down-samplings)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": TINY_MODEL}))
    assert main(["model-summary", "--params", str(tmp_path / "params.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "LightSAFT model (lightsaft): 71,988 trainable parameters (0.3 MB fp32)"
    assert lines[1] == "input  [B, 4, T, F] = [1, 4, 16, 129]"
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[4:]}
    assert list(rows) == [
        "first_conv",
        "encoders.0",
        "downsamplings.0",
        "encoders.1",
        "downsamplings.1",
        "mid_block",
        "upsamplings.0",
        "decoders.0",
        "upsamplings.1",
        "decoders.1",
        "last_conv",
    ]
    # first_conv: a 1x2 conv 4 -> 8 channels (64 weights + 8 biases) and its BatchNorm (8 + 8)
    assert rows["first_conv"].split() == ["[1,", "8,", "16,", "128]", "88"]
    assert rows["downsamplings.1"].split()[:4] == ["[1,", "8,", "4,", "32]"]
    # last_conv: a 1x2 conv 8 -> 4 channels (64 + 4), padded back to 129 bins
    assert rows["last_conv"].split() == ["[1,", "4,", "16,", "129]", "68"]


def test_model_summary_names_a_bad_params_file(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {**TINY_MODEL, "dk": 0}}))
    assert main(["model-summary", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "model.dk = 0" in capsys.readouterr().err


@pytest.mark.parametrize("variant,expected", [("lightsaft", 13_404_468), ("lasaft", 191_326_772)])
def test_seed_config_parameter_counts(variant, expected):
    params = dict(defaults()["model"], variant=variant)
    with torch.device("meta"):  # counts only; no 760 MB allocation for LaSAFT
        model = build_model(params)
    assert count_parameters(model) == expected


def test_seed_config_matches_official_key_listing():
    from lightsaft.weights.official_keys import official_to_ours

    listing = shared_path("reference", "state_dict_keys_seed.txt").read_text().splitlines()
    with torch.device("meta"):
        ours = build_model(defaults()["model"]).net.state_dict()
    seen = set()
    for line in listing:
        key, shape, _ = line.split("\t")
        name = official_to_ours(key)
        assert name in ours, key
        assert list(ours[name].shape) == eval(shape), key
        seen.add(name)
    assert seen == set(ours)


def test_gradients_reach_every_parameter(tiny_model_params):
    torch.manual_seed(0)
    model = build_model(tiny_model_params).train()
    spec = torch.randn(4, 4, 16, 129)
    out = model(spec, torch.tensor([0, 1, 2, 3]))
    assert out.shape == spec.shape
    out.pow(2).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_conditions_change_the_output(tiny_model_params):
    torch.manual_seed(0)
    model = build_model(tiny_model_params).eval()
    spec = torch.randn(1, 4, 16, 129).repeat(4, 1, 1, 1)
    with torch.no_grad():
        out = model(spec, torch.arange(4))
    for i in range(1, 4):
        assert not torch.allclose(out[0], out[i])


def test_bad_inputs_raise_clear_errors(tiny_model_params):
    model = build_model(tiny_model_params).eval()
    with pytest.raises(ValueError, match="condition indices must be in 0..3"):
        model(torch.randn(2, 4, 16, 129), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"\[batch, 4, frames, 129\]"):
        model(torch.randn(2, 4, 16, 128), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.randn(2, 4, 10, 129), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one integer condition per batch item"):
        model(torch.randn(2, 4, 16, 129), torch.tensor([0]))


def test_official_loader_lists_mismatches(tiny_model_params):
    golden = _golden("lightsaft_tiny")
    model = build_model(dict(tiny_model_params, dk=16))
    with pytest.raises(ValueError, match="shape mismatches") as info:
        load_official_state_dict(model, golden["state_dict"])
    assert "encoders.0.keys" in str(info.value)
    state = dict(golden["state_dict"], bogus=torch.zeros(1))
    with pytest.raises(ValueError, match="(?s)unmatched official keys.*bogus"):
        load_official_state_dict(build_model(tiny_model_params), state)


def test_save_and_load_weights_roundtrip(tmp_path, tiny_model_params):
    torch.manual_seed(0)
    model = build_model(tiny_model_params).eval()
    save_weights(tmp_path / "w.pt", model, tiny_model_params)
    loaded = load_weights(tmp_path / "w.pt")
    spec = torch.randn(2, 4, 16, 129)
    cond = torch.tensor([0, 3])
    with torch.no_grad():
        torch.testing.assert_close(loaded(spec, cond), model(spec, cond))
    assert loaded.params == dict(tiny_model_params)
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]  # no temp file left behind


def test_model_config_validation(tiny_model_params):
    """The model section's own rules: they also check the model params a weights file carries."""
    with pytest.raises(ConfigError, match="model.dk = 0"):
        MODEL.validate(dict(tiny_model_params, dk=0))
    with pytest.raises(ConfigError, match="unknown key model.dkk"):
        MODEL.validate(dict(tiny_model_params, dkk=3))
    with pytest.raises(ConfigError, match="num_frame = 18.*divisible by 2\\*\\*2"):
        MODEL.validate(dict(tiny_model_params, num_frame=18))
    with pytest.raises(ConfigError, match="n_fft = 250.*power of two"):
        MODEL.validate(dict(tiny_model_params, n_fft=250))
    with pytest.raises(ConfigError, match="variant = 'saft'"):
        MODEL.validate(dict(tiny_model_params, variant="saft"))


@pytest.mark.parametrize("name", ["lightsaft_tiny", "lasaft_tiny"])
def test_channels_last_is_a_layout_switch_only(name, tmp_path):
    """Both layouts give the golden output and the same gradients (in float64: in float32 the rounding
    of the two convolution algorithms differs, and the batch-norm backward amplifies it to ~1e-3 of
    some gradients); the switch is in no weights file."""
    golden = _golden(name)
    assert _official_model(golden).channels_last is None  # auto, the CPU default (see layers.TFC)
    grads = {}
    for channels_last in (None, False, True):
        model = _official_model(golden)  # fresh: a train-mode forward updates the BatchNorm statistics
        model.channels_last = channels_last
        assert all(block.tfc.channels_last is channels_last for block in model.net.encoders)
        with torch.no_grad():
            out = model.eval()(golden["input_spec"], golden["condition"])
        torch.testing.assert_close(out, golden["output_eval"], rtol=1e-5, atol=1e-5)
        model.double().train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        model(golden["input_spec"].double(), golden["condition"]).pow(2).mean().backward()
        grads[channels_last] = {k: p.grad for k, p in model.named_parameters()}
    for key, grad in grads[None].items():
        for channels_last in (False, True):
            torch.testing.assert_close(grads[channels_last][key], grad, rtol=1e-9, atol=1e-12, msg=key)

    built = build_model(MODEL.validate(golden["config"]), channels_last=True)
    assert built.channels_last and "channels_last" not in built.params
    save_weights(tmp_path / "w.pt", built, golden["config"])
    assert load_weights(tmp_path / "w.pt").channels_last is None
    with pytest.raises(ValueError, match="channels_last must be None"):
        built.channels_last = "yes"
