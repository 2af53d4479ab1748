"""Study files: points, names, validation before anything is queued; the published runs' studies."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from helpers import REPO, shared_path

from lightsaft.config import defaults, validate
from lightsaft.errors import ConfigError
from lightsaft.model.unet import build_model, count_parameters
from lightsaft.schema import set_dotted
from lightsaft.study import experiments
from lightsaft.study.studies import load_study
from lightsaft.weights.official import detect_variant, model_params, network_state
from lightsaft.weights.official_keys import load_official_state_dict
from lightsaft.weights.published import MDX_KIT, published_model


def _study(tmp_path, **body):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"set": {"data.source": "synthetic", "model.dk": 8}}))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_grid_times_seeds_with_base_overrides(tmp_path):
    study = load_study(
        _study(
            tmp_path,
            study="s",
            base="base.yaml",
            set={"trainer.max_epochs": 2},
            grid={"model.dk": [4, 16], "model.num_tdfs": [2]},
            seeds=[1, 2],
        )
    )
    points = study.points()
    assert [p.name for p in points] == [
        "s-dk4-numtdfs2-s1",
        "s-dk4-numtdfs2-s2",
        "s-dk16-numtdfs2-s1",
        "s-dk16-numtdfs2-s2",
    ]
    assert points[-1].overrides == {
        "data.source": "synthetic",
        "model.dk": 16,
        "trainer.max_epochs": 2,
        "model.num_tdfs": 2,
        "train.seed": 2,
    }


@pytest.mark.parametrize(
    "body,message",
    [
        ({"grid": {"model.dkk": [4]}}, "unknown key model.dkk"),
        ({"grid": {"model.dk": [0]}}, "model.dk = 0"),
        ({"grid": {"model.dk": []}}, "non-empty list"),
        ({"sett": {}}, "unknown key"),
        ({"study": "a b"}, "study name"),
    ],
)
def test_bad_study_files_fail_before_queueing(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_study(_study(tmp_path, **body))


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    points = load_study(path).points()  # every point validated against the params schema
    assert points
    counts = {"dk_num_tdfs.yaml": 4 * 4 * 3, "demo_grid.yaml": 4}
    expected = {**counts, "official_checkpoints.yaml": 5, "official_checkpoints_hq.yaml": 5}.get(path.name, 1)
    assert len(points) == expected
    if path.name == "dk_num_tdfs.yaml":  # compared with the seed configuration
        assert (
            load_study(path).reference == f"dk={defaults()['model']['dk']}, num_tdfs={defaults()['model']['num_tdfs']}"
        )


def test_a_study_with_a_base_and_no_points_of_its_own_runs_the_bases_points(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "study: a\nset: {model.dk: 16, data.source: musdb18}\npoints:\n  - {name: p, set: {model.dk: 8}}\n"
        "  - {name: q, set: {model.num_tdfs: 2}}\n"
    )
    (tmp_path / "b.yaml").write_text("study: b\nbase: a.yaml\nset: {data.source: musdb18hq, model.dk: 4}\n")
    (tmp_path / "c.yaml").write_text("study: c\nbase: a.yaml\ngrid: {model.dk: [32]}\n")
    a, b, c = (load_study(tmp_path / f"{name}.yaml").points() for name in "abc")
    assert [p.name for p in b] == ["b-p", "b-q"]
    assert [p.overrides for p in b] == [
        {**a[0].overrides, "data.source": "musdb18hq"},  # the point's own set still wins over the file's
        {**a[1].overrides, "data.source": "musdb18hq", "model.dk": 4},
    ]
    assert [p.name for p in c] == ["c-dk32"]  # a grid of its own: only the base's set


def study_params(name: str, point: int | None = None) -> dict:
    """The params of a study's point (the only one, by default): the defaults with its overrides."""
    points = load_study(REPO / "experiments" / name).points()
    if point is None:
        [chosen] = points
    else:
        chosen = points[point]
    params = defaults()
    for key, value in chosen.overrides.items():
        set_dotted(params, key, value)
    return validate(params)


def test_paper_study_trains_the_published_lasaft_large_model():
    """Its model section is the config the importer derives for the published lasaft_large
    checkpoints: variant from their keys, the rest from their hyper-parameters, every key and
    shape of the real files filling the model built from it."""
    state = {}
    for line in shared_path("reference", "state_dict_keys_lasaft_large_framework.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        state[key] = torch.empty(eval(shape), dtype=getattr(torch, dtype.removeprefix("torch.")), device="meta")
    network = network_state(state, "listing")
    published = published_model("lasaft_large_2020")
    hyper_parameters = {k: v for k, v in published.items() if k != "variant"}  # as the files hold them
    imported, _ = model_params(hyper_parameters, detect_variant(list(network), "listing"), "listing")
    with torch.device("meta"):
        model = build_model(imported)
    load_official_state_dict(model, network)  # strict: every key used, every parameter filled
    assert count_parameters(model) == 31_541_908
    assert imported == published
    # the run behind the checkpoints: the argparse command of the READMEs from 2021-03-03 to 2021-07-28 and
    # the code of that time (experiments/paper_lasaft_large.yaml cites the commits)
    params = study_params("paper_lasaft_large.yaml")
    assert params["model"] == imported
    t, tr = params["train"], params["trainer"]
    assert (tr["devices"], tr["strategy"], tr["sync_batchnorm"], tr["precision"], tr["deterministic"]) == (
        4,
        "ddp",
        True,
        "16-mixed",
        True,
    )
    assert (tr["batch_size"], tr["max_epochs"], t["lr"], t["seed"], t["rank_sampling"]) == (4, 1000, 1e-4, 2020, "same")
    assert (t["auto_lr_schedule"], t["lr_factor"], t["lr_patience"]) == (True, 0.1, 50)
    assert (t["early_stop_patience"], t["save_top_k"]) == (None, 3)
    assert params["separate"] | {"precision": None} == {
        "protocol": "official",
        "overlap": 0.0,
        "min_trim": 5000,
        "precision": None,
    }


def test_hydra_era_study_is_the_later_recipe_of_the_same_model():
    params, later = study_params("paper_lasaft_large.yaml"), study_params("paper_lasaft_large_hydra.yaml")
    assert later["model"] == params["model"] and later["trainer"]["devices"] == 4
    t = later["train"]
    assert (later["trainer"]["batch_size"], t["lr"], t["lr_factor"], t["lr_patience"]) == (8, 1e-3, 0.5, 50)
    assert (t["early_stop_patience"], t["early_stop_min_delta"], t["save_top_k"]) == (300, 0.05, 5)
    assert (t["seed"], t["rank_sampling"], later["trainer"]["max_epochs"]) == (2020, "same", 1000)


def test_the_seed_configs_early_stopping_counts_any_improvement():
    """params.yaml has no published run behind it: a run stops when val_loss stopped improving, not
    when it first fails to improve by a fixed amount (0.05 of raw_l1 is almost all of it: an all-zero
    estimate of a real MUSDB18 excerpt scores about 0.058)."""
    t = defaults()["train"]
    assert (t["early_stop_patience"], t["early_stop_min_delta"], t["rank_sampling"]) == (300, 0, "distinct")


def test_mdx_study_trains_the_published_lightsaft_small_model():
    params = study_params("mdx_lightsaft_small.yaml")
    assert params["model"] == published_model("lightsaft_small_2020")
    t, tr = params["train"], params["trainer"]
    assert (t["lr"], t["auto_lr_schedule"], t["early_stop_patience"], t["seed"]) == (5e-4, False, None, 2021)
    assert (t["save_top_k"], t["rank_sampling"]) == (5, "same")  # epoch 694 was one of the five kept
    assert (tr["devices"], tr["batch_size"], tr["max_epochs"], tr["sync_batchnorm"]) == (4, 16, 1000, True)
    assert params["data"]["source"] == "musdb18hq"
    assert {key: params["separate"][key] for key in MDX_KIT} == MDX_KIT


def test_published_checkpoints_are_scored_on_both_releases_with_the_authors_separation():
    """One study per MUSDB18 release, the same points; each checkpoint separated as its authors did."""
    releases = {}
    for name, source in (("official_checkpoints.yaml", "musdb18"), ("official_checkpoints_hq.yaml", "musdb18hq")):
        study = load_study(REPO / "experiments" / name)
        points = {p.name.removeprefix(study.name + "-"): p.overrides for p in study.points()}
        releases[source] = {
            point: {k: v for k, v in overrides.items() if not k.startswith(("data.", "mlflow."))}
            for point, overrides in points.items()
        }
        for i, point in enumerate(points):
            params = study_params(name, i)
            assert (params["data"]["source"], params["data"]["root"]) == (source, f"data/{source}")
            separate = {key: params["separate"][key] for key in MDX_KIT}
            if params["train"]["pretrained"] == "lightsaft_small_2020":
                assert separate == MDX_KIT, point
                assert params["model"] == published_model("lightsaft_small_2020")
            else:
                assert separate["protocol"] == "official" and separate["min_trim"] == 5000, point
                assert params["model"] == published_model(params["train"]["pretrained"])
    assert releases["musdb18"] == releases["musdb18hq"] and len(releases["musdb18"]) == 5


def test_points_carry_their_label_and_seed(tmp_path):
    study = load_study(_study(tmp_path, study="s", grid={"model.dk": [4, 16], "train.lr": [1e-3]}, seeds=[1, 2]))
    assert [(p.label, p.seed) for p in study.points()] == [
        ("dk=4, lr=0.001", 1),
        ("dk=4, lr=0.001", 2),
        ("dk=16, lr=0.001", 1),
        ("dk=16, lr=0.001", 2),
    ]  # fmt: skip  (grid values as the file gives them: 0.001, not 1e-03 or 0.001000)
    assert study.labels() == ["dk=4, lr=0.001", "dk=16, lr=0.001"] and study.reference is None
    assert study.grid_values("dk=16, lr=0.001") == {"model.dk": 16, "train.lr": 0.001}


@pytest.mark.parametrize(
    "reference, label",
    [
        ({"model.dk": 16, "model.num_tdfs": 2}, "dk=16, num_tdfs=2"),  # grid values
        ({"model.num_tdfs": 4}, "dk=4, num_tdfs=4"),  # fewer keys, where they pick one point (one dk below)
        ("dk=4, num_tdfs=2", "dk=4, num_tdfs=2"),  # a label
        ("wide", "wide"),  # an explicit point
    ],
)
def test_the_reference_point_names_one_point(tmp_path, reference, label):
    body = {"study": "s", "grid": {"model.dk": [4, 16], "model.num_tdfs": [2, 4]}, "reference": reference,
            "points": [{"name": "wide", "set": {"model.internal_channels": 32}}]}  # fmt: skip
    if reference == {"model.num_tdfs": 4}:
        body["grid"]["model.dk"] = [4]  # one dk: num_tdfs alone picks one point
    assert load_study(_study(tmp_path, **body)).reference == label


@pytest.mark.parametrize(
    "reference, message",
    [
        ({"model.dk": 32}, "reference {'model.dk': 32} matches no point; the points are: dk=4, num_tdfs=2; "),
        ({"model.dk": 4}, "matches 2 points (give every grid key)"),
        ({"model.dkk": 4}, "name grid keys with their values (grid keys: model.dk, model.num_tdfs)"),
        ("narrow", "reference 'narrow' matches no point"),
        (["dk=4"], "matches no point"),
    ],
)
def test_a_reference_that_names_no_single_point_is_refused(tmp_path, reference, message):
    body = {"grid": {"model.dk": [4, 16], "model.num_tdfs": [2, 4]}, "reference": reference}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(_study(tmp_path, **body))


def test_set_values_keep_their_yaml_types():
    args = experiments.set_args({"trainer.precision": "32", "model.dk": 16, "data.valid_tracks": None})
    assert args == ["-S", 'trainer.precision="32"', "-S", "model.dk=16", "-S", "data.valid_tracks=null"]


def test_explicit_points_beside_a_grid(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "study: mix\nset: {model.dk: 16}\ngrid: {model.num_tdfs: [2, 4]}\n"
        "points:\n  - {name: wide, set: {model.internal_channels: 32}}\n"
        "  - {name: pre, set: {train.pretrained: lasaft_large_2021, model.dk: 32}}\n"
    )
    points = load_study(tmp_path / "s.yaml").points()
    assert [p.name for p in points] == ["mix-numtdfs2", "mix-numtdfs4", "mix-wide", "mix-pre"]
    assert points[2].overrides == {"model.dk": 16, "model.internal_channels": 32}
    assert points[3].overrides == {"model.dk": 32, "train.pretrained": "lasaft_large_2021"}
    (tmp_path / "only.yaml").write_text("points:\n  - {name: a, set: {model.dk: 8}}\n")
    assert [p.name for p in load_study(tmp_path / "only.yaml").points()] == ["only-a"]  # no base point


@pytest.mark.parametrize(
    "points, message",
    [
        ("{name: a}", "points must be a list"),
        ("[{name: a, set: {model.dk: 8}}, {name: a, set: {model.dk: 4}}]", "point names repeat"),
        ("[{name: 'a b', set: {}}]", "points[0].name 'a b' must be"),
        ("[{name: a, set: {model.dkk: 8}}]", "unknown key model.dkk"),
        ("[{name: a, sett: {}}]", "points[0] must be"),
    ],
)
def test_bad_points_are_refused(tmp_path, points, message):
    (tmp_path / "s.yaml").write_text(f"points: {points}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(tmp_path / "s.yaml")


def test_demo_output_is_passed_through_less_dvcs_harmless_warnings(tmp_path, capfd):
    """On a first run DVC warns once per output it has no copy of yet (it then makes it): the demo
    drops exactly those lines, plain or coloured (a terminal), and keeps everything else,
    progress-bar redraws included."""
    import sys

    from lightsaft.study.queue import HARMLESS, stream_filtered

    script = tmp_path / "emit.py"
    script.write_text(
        "import sys\n"
        "print('stage output', flush=True)\n"
        "print(\"WARNING: No file hash info found for '/r/models/weights.pt'. \"\n"
        '      "It won\'t be created.", file=sys.stderr)\n'
        "sys.stderr.write('\\x1b[33mWARNING\\x1b[39m: No file hash info found for \\'/r/data/cache\\'. '\n"
        "                 'It won\\'t be created.\\r\\r\\n')  # on a terminal: coloured, the pty's line end\n"
        "print('WARNING: something else', file=sys.stderr, flush=True)\n"
        "print('50%\\r100%', flush=True)\n"
        "sys.exit(3)\n"
    )
    assert stream_filtered([sys.executable, str(script)], tmp_path, {}, HARMLESS) == 3
    out = capfd.readouterr().out
    assert out == "stage output\nWARNING: something else\n50%\r100%\n"
