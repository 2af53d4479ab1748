"""What the page tests share: a parser of the parts of our HTML pages they check, and a real
headless Chromium (with chromedriver) to load and play them."""

from __future__ import annotations

import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

from helpers import require

PNG = b"\x89PNG\r\n\x1a\n"
SCORES = ("sdr", "baseline", "mdx", "si-sdr", "clipped")  # the spans of a source's scores, by class


class Page(HTMLParser):
    """The parts of the page the tests check: track rows with their players and scores, the
    summary table's cells, every src/href, and the visible text."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict] = []
        self.summary: list[list[str]] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._capture: list | None = None
        self._in_summary = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("src", "href") if a.get(k) is not None]
        cls = a.get("class", "")
        if tag == "section" and cls == "track":
            self.rows.append({"track": a["data-track"], "audio": {}, **{k: {} for k in SCORES}})
        elif tag == "figure" and cls == "source":
            self._source = a["data-source"]
        elif tag == "audio":
            self.rows[-1]["audio"][self._source] = a
        elif tag == "span" and cls in SCORES:
            self._capture = [self.rows[-1][cls], self._source]
        elif tag == "table" and cls == "summary":
            self._in_summary = True
        elif tag == "tr" and self._in_summary:
            self.summary.append([])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_summary = False

    def handle_data(self, data):
        self.text.append(data)
        if self._capture is not None:
            target, key = self._capture
            target[key] = data.replace("mixture", "").strip()
            self._capture = None
        elif self._in_summary and self.summary and data.strip():
            self.summary[-1].append(data.strip())


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chromium(profile: Path):
    require(
        os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER),
        "chromium + chromedriver (apt-get install -y chromium chromium-driver)",
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "selenium (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait_for(driver, script: str, timeout: float = 20.0):
    """Poll a JS expression until it is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)
