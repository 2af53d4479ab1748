"""`lightsaft separate --page`: the seed's demo page for anyone's songs, one page per model, rows
added by later runs, checked in its HTML, its audio and a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
import torch
from browser import PNG, Page, chromium, wait_for
from helpers import TINY_MODEL

from lightsaft.cli import main
from lightsaft.data.audio import resample
from lightsaft.model.unet import build_model, count_parameters
from lightsaft.paths import file_sha256
from lightsaft.spectral import SAMPLE_RATE, TARGETS
from lightsaft.weights.ours import save_weights

SOURCES = ["mixture", *TARGETS]


def noise(rate: int, seconds: float, channels: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((int(rate * seconds), channels)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, Path]:
    """A stereo 48 kHz flac, a mono 22.05 kHz wav with a name that needs escaping, a short one."""
    folder = tmp_path_factory.mktemp("songs")
    specs = {
        "Stereo Song.flac": (48000, 1.5, 2),
        "Zoë & <Friends> #1.wav": (22050, 1.2, 1),
        "short.wav": (44100, 0.5, 2),
    }
    paths = {}
    for i, (name, (rate, seconds, channels)) in enumerate(specs.items()):
        paths[name] = folder / name
        sf.write(paths[name], noise(rate, seconds, channels, i), rate)
    return paths


def tiny_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_weights(path, build_model(TINY_MODEL), TINY_MODEL)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    return tiny_weights(folder / "weights.pt", 0), tiny_weights(folder / "other.pt", 1)


FAST = ["--overlap", "0", "--min-trim", "0", "--batch-size", "32"]  # few forward passes of the tiny model


def separate(songs, model: Path, out: Path, *options: str) -> int:
    return main(["separate", *map(str, songs), "--model", str(model), "--out", str(out), "--page", *FAST, *options])


def page_folder(out: Path, model: Path) -> Path:
    return out / f"{model.stem}-{file_sha256(model)[:8]}"


@pytest.fixture(scope="module")
def page(tmp_path_factory, songs, models) -> Path:
    """Two songs, then a third added by a second run, with the first model."""
    out = tmp_path_factory.mktemp("separated")
    first = [songs["Stereo Song.flac"], songs["Zoë & <Friends> #1.wav"]]
    assert separate(first, models[0], out, "--excerpt-seconds", "1", "--excerpt-offset", "0.5") == 0
    assert separate([songs["short.wav"]], models[0], out, "--excerpt-seconds", "1") == 0
    return page_folder(out, models[0])


def test_page_numbers_a_row_per_song_with_players_and_full_files(page, songs, models):
    text = (page / "index.html").read_text(encoding="utf-8")
    parsed = Page(text)
    names = ["Stereo Song", "Zoë & <Friends> #1", "short"]
    assert [row["track"] for row in parsed.rows] == names and "<Friends>" not in text
    headings = re.findall(r'<span class="num">(\d+)\.</span>', text)
    assert headings == ["1", "2", "3"]
    expected = {"Stereo Song": 1.0, "Zoë & <Friends> #1": 0.7, "short": 0.5}  # or to the end of the song
    for row in parsed.rows:
        assert list(row["audio"]) == SOURCES
        for attrs in row["audio"].values():
            assert "controls" in attrs and not os.path.isabs(attrs["src"])
            path = page / unquote(attrs["src"])
            assert path.suffix == ".mp3" and sf.info(str(path)).duration == pytest.approx(
                expected[row["track"]], abs=0.06
            )
    full = [unquote(link) for link in parsed.links if link.endswith((".wav", ".flac"))]
    assert len(full) == 3 * 5 and not [link for link in parsed.links if "://" in link]
    for link in full:
        assert (page / link).is_file(), link
    assert (page / full[0]).resolve() == songs["Stereo Song.flac"].resolve()  # the original, where it is
    estimate, rate = sf.read(page / "Zoë & <Friends> #1" / "vocals.wav", always_2d=True)
    assert rate == 22050 and estimate.shape == (int(22050 * 1.2), 1)  # the song's own rate and channels

    words = " ".join(parsed.text)
    for fact in (
        str(models[0]),
        "LightSAFT",
        "dk",
        "TDFs",
        f"{count_parameters(build_model(TINY_MODEL)):,}",
        file_sha256(models[0])[:16],
        "crossfade, overlap 0, float32",
        "0:00.5–0:01.5 of 0:01.5",
    ):
        assert fact in words, fact
    state = json.loads((page / "page.json").read_text())
    assert [s["name"] for s in state["songs"]] == names


def test_excerpts_are_the_requested_slice(tmp_path, songs, models):
    out = tmp_path / "out"
    assert (
        separate(
            [songs["Stereo Song.flac"]],
            models[0],
            out,
            "--excerpt-seconds",
            "0.5",
            "--excerpt-offset",
            "1",
            "--audio-format",
            "wav",
        )
        == 0
    )
    folder = page_folder(out, models[0])
    song, rate = sf.read(songs["Stereo Song.flac"], dtype="float32", always_2d=True)
    clip, clip_rate = sf.read(folder / "excerpts" / "stereo-song" / "mixture.wav", dtype="float32", always_2d=True)
    assert clip_rate == SAMPLE_RATE
    np.testing.assert_allclose(clip, resample(song[rate : rate + rate // 2], rate, SAMPLE_RATE), atol=2 / 32768)
    bass, _ = sf.read(folder / "Stereo Song" / "bass.wav", dtype="float32", always_2d=True)
    written, _ = sf.read(folder / "excerpts" / "stereo-song" / "bass.wav", dtype="float32", always_2d=True)
    np.testing.assert_allclose(
        written, resample(bass[rate : rate + rate // 2], rate, SAMPLE_RATE).clip(-1, 1), atol=2 / 32768
    )


def test_full_file_links_follow_the_format_and_the_two_stems(tmp_path, songs, models):
    out = tmp_path / "out"
    options = ["--format", "flac", "--two-stems", "vocals", "--excerpt-seconds", "0.5"]
    assert separate([songs["Stereo Song.flac"]], models[0], out, *options) == 0
    folder = page_folder(out, models[0])
    (row,) = Page((folder / "index.html").read_text(encoding="utf-8")).rows
    assert list(row["audio"]) == ["mixture", "vocals", "no_vocals"]
    links = Page((folder / "index.html").read_text(encoding="utf-8")).links
    full = [unquote(link) for link in links if not link.startswith("excerpts/")]
    assert full[1:] == ["Stereo Song/vocals.flac", "Stereo Song/no_vocals.flac"]
    song, rate = sf.read(songs["Stereo Song.flac"], dtype="float32", always_2d=True)
    vocals, vocals_rate = sf.read(folder / full[1], dtype="float32", always_2d=True)
    rest, _ = sf.read(folder / full[2], dtype="float32", always_2d=True)
    assert vocals_rate == rate and sf.info(str(folder / full[1])).subtype == "PCM_16"
    np.testing.assert_allclose(vocals + rest, song, atol=2 / 32768)  # two 16-bit roundings


def test_same_model_adds_rows_another_model_gets_its_own_page(tmp_path, songs, models):
    out = tmp_path / "out"
    assert separate([songs["Stereo Song.flac"], songs["short.wav"]], models[0], out) == 0
    assert separate([songs["short.wav"]], models[0], out, "--excerpt-seconds", "0.25") == 0  # again: same row
    assert separate([songs["Zoë & <Friends> #1.wav"]], models[1], out) == 0
    first, second = page_folder(out, models[0]), page_folder(out, models[1])
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, second.name])
    assert [r["track"] for r in Page((first / "index.html").read_text()).rows] == ["Stereo Song", "short"]
    assert [r["track"] for r in Page((second / "index.html").read_text()).rows] == ["Zoë & <Friends> #1"]
    assert sf.info(str(first / "excerpts" / "short" / "vocals.mp3")).duration == pytest.approx(0.25, abs=0.06)
    assert str(models[1]) in " ".join(Page((second / "index.html").read_text()).text)


def test_bad_page_options_and_songs_name_the_problem(tmp_path, songs, models, capsys):
    out = tmp_path / "out"
    assert separate([songs["short.wav"]], models[0], out, "--excerpt-seconds", "0") == 2
    assert "--excerpt-seconds = 0.0: must be > 0" in capsys.readouterr().err
    assert separate([songs["short.wav"]], models[0], out, "--audio-format", "aac") == 2
    assert "--audio-format = 'aac': must be one of 'mp3', 'ogg', 'wav'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    code = separate([songs["short.wav"], songs["Stereo Song.flac"]], models[0], out, "--excerpt-offset", "1")
    assert code == 1
    assert "short.wav: --excerpt-offset 1 is beyond its end (0.5 s); lower it" in capsys.readouterr().err
    folder = page_folder(out, models[0])
    assert [r["track"] for r in Page((folder / "index.html").read_text()).rows] == ["Stereo Song"]
    assert not (folder / "short").exists()  # refused before separating it


@pytest.mark.slow  # a real headless Chromium (a process of its own)
def test_chromium_plays_every_player_of_the_page(page, tmp_path):
    driver = chromium(tmp_path / "profile")
    try:
        driver.get((page / "index.html").as_uri())
        audios = "Array.from(document.querySelectorAll('audio'))"
        assert driver.execute_script(f"return {audios}.length") == 3 * 5
        ready = wait_for(driver, f"return {audios}.every(a => a.readyState >= 1 && a.duration > 0)")
        assert ready, driver.execute_script(f"return {audios}.map(a => [a.currentSrc, a.readyState, a.error])")
        driver.execute_script(f"{audios}.forEach(a => {{ a.muted = true; a.play(); }})")
        assert wait_for(driver, f"return {audios}.every(a => a.currentTime > 0)")
        links = driver.execute_script("return Array.from(document.querySelectorAll('a.full')).map(a => a.href)")
        assert len(links) == 15 and all(Path(unquote(link.removeprefix("file://"))).is_file() for link in links)
        shot = tmp_path / "page.png"
        assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == PNG
        if keep := os.environ.get("LIGHTSAFT_SONG_PAGE_SCREENSHOT"):
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1280, height + 140)
            driver.save_screenshot(keep)
    finally:
        driver.quit()
