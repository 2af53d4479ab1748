"""A study's projected disk: computed from each point's params and the track lengths, printed
before anything is queued, and refused when the DVC cache's file system lacks the space."""

from __future__ import annotations

import shutil
import subprocess
from collections import namedtuple

import pytest
import yaml
from helpers import TINY_MODEL, make_project

from lightsaft.prepare import cache_bytes
from lightsaft.study import disk
from lightsaft.study.studies import Point

SYNTHETIC = {"train_tracks": 3, "valid_tracks": 1, "test_tracks": 2, "seconds": 2.0, "seed": 0}


@pytest.fixture
def repo(tmp_path):
    from dvc.repo import Repo

    root = make_project(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    Repo.init(str(root), force=True).close()
    params = {"data": {"source": "synthetic", "synthetic": SYNTHETIC}, "model": dict(TINY_MODEL)}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_a_point_takes_its_estimates_weights_and_report_and_each_cache_counts_once(repo):
    points = [Point("a", {}), Point("b", {"train.seed": 1}), Point("c", {"prepare.dtype": "float32"})]
    projection = disk.project(repo, points)
    samples = int(2.0 * disk.SAMPLE_RATE)
    splits = ["train"] * 3 + ["valid"] + ["test"] * 2
    for dtype in ("float16", "float32"):  # two prepare inputs: the seed does not make a cache of its own
        expected = sum(cache_bytes({"split": s}, samples, 256, 64, dtype) for s in splits)
        assert expected in projection.caches.values()
    assert len(projection.caches) == 2 and set(projection.points) == {"a", "b", "c"}
    estimates = projection.points["a"]["estimates"]
    assert estimates == int(4 * disk.FLAC_BYTES_PER_SECOND * 2 * 2.0)  # 4 targets x 2 test tracks x 2 s
    assert projection.points["a"] == projection.points["b"]
    assert (
        projection.total
        == sum(projection.caches.values())
        + sum(sum(p.values()) for p in projection.points.values())
        + projection.working
    )


def test_finished_points_add_nothing(repo):
    projection = disk.project(repo, [Point("a", {}), Point("b", {})], done={"a"})
    assert set(projection.points) == {"b"}


def test_musdb_without_data_in_the_workspace_uses_the_published_lengths(repo):
    projection = disk.project(repo, [Point("a", {"data.source": "musdb18"})])
    assert "published lengths" in projection.source
    test_seconds = disk.MUSDB18_SECONDS["test"]
    assert projection.points["a"]["estimates"] == pytest.approx(4 * disk.FLAC_BYTES_PER_SECOND * test_seconds, rel=1e-6)
    assert "musdb18" in projection.table() and "total" in projection.table()


def test_a_study_that_does_not_fit_is_refused_unless_forced(repo, monkeypatch):
    projection = disk.project(repo, [Point("a", {})])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, projection.total - 1))
    with pytest.raises(disk.DiskError, match=r"needs about .* GB but .* free .*--force runs it anyway"):
        disk.check_space(repo, projection)
    assert disk.check_space(repo, projection, force=True).startswith("--force: the study needs about")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, projection.total))
    assert "free on the file system of the DVC cache" in disk.check_space(repo, projection)
