"""The report in a real browser: headless Chromium renders it, runs nothing, logs nothing.

Skipped when no Chromium is installed, unless ``VULNSCOPE_REQUIRE_BROWSER=1`` (as in CI),
where a missing browser fails the test instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from test_report import synthetic_record
from vulnscope.report import write_report

HOSTILE_NAME = '<script>document.title="pwned"</script>'
WIDTH, HEIGHT = 1200, 3000
# Chromium logs each console message to stderr as "...:INFO:CONSOLE:1] ..." (older releases
# "...:INFO:CONSOLE(1)] ..."); a script error reads "Uncaught ...", a CSP refusal "violates".
CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught")


@pytest.fixture(scope="module")
def browser() -> str:
    found = next(
        (
            path
            for name in ("chromium", "chromium-browser", "google-chrome")
            if (path := shutil.which(name))
        ),
        None,
    )
    if found is None:
        message = "no headless Chromium (chromium, chromium-browser, google-chrome) on PATH"
        if os.environ.get("VULNSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}, and VULNSCOPE_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return found


def run_browser(
    browser: str, profile: Path, page: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    """Open ``page`` headless in a fresh profile, console messages logged to stderr."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *flags,
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def console_messages(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if CONSOLE.search(line)]


class Elements(HTMLParser):
    """The start tags of a document and the text of its title and first heading."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, str] = {"title": "", "h1": ""}
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data):
        for tag in self.texts:
            if tag in self._open:
                self.texts[tag] += data


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    directory = tmp_path_factory.mktemp("report")
    record = synthetic_record(directory)
    record["model"]["name"] = HOSTILE_NAME
    record["data"]["class_names"] = ['<img src="x" onerror="document.title=1">', "one", "two"]
    return write_report(record, directory), record


def test_the_report_renders_as_a_full_page_screenshot(browser, report, tmp_path):
    path, _ = report
    screenshot = tmp_path / "report.png"
    run_browser(
        browser,
        tmp_path / "profile",
        path,
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={screenshot}",
    )
    with Image.open(screenshot) as image:
        assert image.size == (WIDTH, HEIGHT)
        colours = image.convert("RGB").getcolors(maxcolors=WIDTH * HEIGHT)
    assert colours is not None and len(colours) > 50  # text, badges and figures, not blank


def test_the_report_runs_nothing_and_logs_no_console_message(browser, report, tmp_path):
    path, record = report
    result = run_browser(browser, tmp_path / "profile", path, "--dump-dom")
    assert console_messages(result) == []
    assert '&lt;script&gt;document.title="pwned"&lt;/script&gt;' in result.stdout
    dom = Elements()
    dom.feed(result.stdout)
    assert dom.texts["title"] == f"vulnscope audit: {HOSTILE_NAME}"
    assert dom.texts["h1"] == f"Robustness audit: {HOSTILE_NAME}"
    tags = [tag for tag, _ in dom.tags]
    assert "script" not in tags
    images = [attrs for tag, attrs in dom.tags if tag == "img"]
    assert len(images) == len(record["figures"]) == 7
    assert all((attrs["src"] or "").startswith("data:image/png;base64,") for attrs in images)
    assert not any(name.startswith("on") for _, attrs in dom.tags for name in attrs)


def test_a_script_error_is_detected(browser, tmp_path):
    """The check above can fail: an uncaught error in a page is caught by the same method."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><title>broken</title><script>undefined_function()</script>")
    messages = console_messages(run_browser(browser, tmp_path / "profile", page, "--dump-dom"))
    assert any("Uncaught ReferenceError: undefined_function is not defined" in m for m in messages)


def test_the_content_security_policy_blocks_injected_script(browser, report, tmp_path):
    """Even markup that escaped the escaping would not run: the page's own CSP refuses it."""
    path, _ = report
    text = path.read_text("utf-8").replace("<main>", f"<main>{HOSTILE_NAME}", 1)
    page = tmp_path / "injected.html"
    page.write_text(text, "utf-8")
    result = run_browser(browser, tmp_path / "profile", page, "--dump-dom")
    dom = Elements()
    dom.feed(result.stdout)
    assert "script" in [tag for tag, _ in dom.tags]
    assert dom.texts["title"] != "pwned"
    assert any("Content Security Policy" in m for m in console_messages(result))


def test_a_real_audit_report_opens_with_every_figure(browser, digits_cnn, digits_test, tmp_path):
    """End to end: the report a (quick) audit writes, screenshotted, no console message."""
    from vulnscope.audit import audit

    out = tmp_path / "audit"
    record = audit(
        digits_cnn,
        digits_test.take(24),
        model_name=HOSTILE_NAME,
        quick=True,
        stages=["linf", "l2", "minimal", "spectra", "amplification", "dangerous"],
        geometry_samples=6,
        out=out,
    ).to_dict()
    screenshot = tmp_path / "audit.png"
    run_browser(
        browser,
        tmp_path / "p1",
        out / "report.html",
        "--hide-scrollbars",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={screenshot}",
    )
    with Image.open(screenshot) as image:
        assert image.size == (WIDTH, HEIGHT)
    result = run_browser(browser, tmp_path / "p2", out / "report.html", "--dump-dom")
    assert console_messages(result) == []
    dom = Elements()
    dom.feed(result.stdout)
    assert dom.texts["h1"] == f"Robustness audit: {HOSTILE_NAME}"
    images = [attrs for tag, attrs in dom.tags if tag == "img"]
    assert len(images) == len(record["figures"]) == 5  # both curves share one figure
    assert record["verdict"]["headline"] in result.stdout
