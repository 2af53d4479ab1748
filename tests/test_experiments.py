"""Study files: points, names, validation before anything is queued; workers per GPU."""

from __future__ import annotations

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
    from helpers import REPO

    assert len(load_study(REPO / "experiments" / "dk_num_tdfs.yaml").points()) == 4 * 4 * 3
    assert len(load_study(REPO / "experiments" / "demo_grid.yaml").points()) == 4
    assert len(load_study(REPO / "experiments" / "demo.yaml").points()) == 1


def test_set_values_keep_their_yaml_types():
    args = experiments._set_args({"trainer.precision": "32", "model.dk": 16, "data.valid_tracks": None})
    assert args == ["-S", 'trainer.precision="32"', "-S", "model.dk=16", "-S", "data.valid_tracks=null"]
