"""Study files: points, names, validation before anything is queued; workers per GPU."""

from __future__ import annotations

import re

import pytest
import yaml

from lightsaft import experiments
from lightsaft.config import ConfigError
from lightsaft.experiments import load_study


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


def test_shipped_studies_are_valid():
    from conftest import REPO

    assert len(load_study(REPO / "experiments" / "dk_num_tdfs.yaml").points()) == 4 * 4 * 3
    assert len(load_study(REPO / "experiments" / "demo_grid.yaml").points()) == 4
    assert len(load_study(REPO / "experiments" / "demo.yaml").points()) == 1


def test_set_values_keep_their_yaml_types():
    args = experiments._set_args({"trainer.precision": "32", "model.dk": 16, "data.valid_tracks": None})
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
    drops exactly those lines and keeps everything else, progress-bar redraws included."""
    import sys

    from lightsaft.experiments import HARMLESS, stream_filtered

    script = tmp_path / "emit.py"
    script.write_text(
        "import sys\n"
        "print('stage output', flush=True)\n"
        "print(\"WARNING: No file hash info found for '/r/models/weights.pt'. \"\n"
        '      "It won\'t be created.", file=sys.stderr)\n'
        "print('WARNING: something else', file=sys.stderr, flush=True)\n"
        "print('50%\\r100%', flush=True)\n"
        "sys.exit(3)\n"
    )
    assert stream_filtered([sys.executable, str(script)], tmp_path, {}, HARMLESS) == 3
    out = capfd.readouterr().out
    assert out == "stage output\nWARNING: something else\n50%\r100%\n"
