"""The documentation site, built with ``mkdocs build --strict`` and looked at in headless Chromium.

The site is built once per module into a temporary directory and opened through ``file://`` URLs.
Screenshots are taken as bytes only, so a test run writes nothing into the repository.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

import flyteplugins.mlflow as plugin

ROOT = Path(__file__).resolve().parents[1]
PILCROW = "\N{PILCROW SIGN}"  # the theme's permalink after each heading

NAV = [
    "Quickstart",
    "User guide",
    "Connecting to a tracking server",
    "Distributed training",
    "Failure handling",
    "Performance",
    "What you see",
    "API reference",
    "Coming from the published plugin",
    "Changelog",
    "Design (contributors)",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as ``make docs`` builds it (strict), into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser page."""
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        yield tab
    finally:
        tab.close()


def _as_rendered(docstring_line: str) -> str:
    """A docstring line as the site shows it: without the Markdown of code spans and references."""
    line = re.sub(r"\[`?([^\]`]+)`?\]\[[^\]]+\]", r"\1", docstring_line)
    return re.sub(r"`+([^`]+)`+", r"\1", line)


def _shows_png(page: Page) -> None:
    png = page.screenshot(full_page=False)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000, "the page did not render"


def _heading(page: Page, selector: str) -> str:
    """A heading's text, without the permalink sign that the theme adds."""
    return page.locator(selector).inner_text().replace(PILCROW, "").strip()


def _nav(page: Page) -> list[str]:
    entries = page.locator("nav.md-nav--primary > ul > li").all()
    return [" ".join(entry.locator(".md-nav__link").first.inner_text().split()) for entry in entries]


def test_home_page_shows_the_quickstart(site: Path, page: Page) -> None:
    """The home page has the title, the quickstart's headings and code, and the whole navigation."""
    page.goto((site / "index.html").as_uri())
    assert page.title() == "flyteplugins-mlflow"
    assert _heading(page, "article h1") == "flyteplugins-mlflow"
    headings = [h.replace(PILCROW, "").strip() for h in page.locator("article h2").all_inner_texts()]
    assert headings[:3] == ["Install", "Track a task", "Run it"]
    code = page.locator("article pre").filter(has_text='@mlflow_run(run_mode="nested")').first
    assert code.is_visible()
    assert 'mlflow_config(tracking_uri="sqlite:///mlflow.db")' in page.locator("article").inner_text()
    assert _nav(page) == NAV
    assert page.locator("input.md-search__input").count() == 1, "no search box"
    _shows_png(page)


def test_api_page_documents_every_public_name(site: Path, page: Page) -> None:
    """The API reference has a heading and the docstring's first line for every name in ``__all__``."""
    page.goto((site / "api" / "index.html").as_uri())
    assert page.title() == "API reference - flyteplugins-mlflow"
    assert _heading(page, "article h1") == "API reference"
    text = " ".join(page.locator("article").inner_text().split())
    for name in plugin.__all__:
        heading = page.locator(f'[id="flyteplugins.mlflow.{name}"]')
        assert heading.count() == 1, f"no section for {name}"
        assert name in heading.inner_text()
        summary = (inspect.getdoc(getattr(plugin, name)) or "").splitlines()[0]
        assert summary and _as_rendered(summary) in text, f"{name}: {summary!r} not shown"
    assert _nav(page) == NAV


def test_api_page_shows_parameters_defaults_and_errors(site: Path, page: Page) -> None:
    """MlflowConfig's section lists each setting with its type, description and default, and its errors."""
    page.goto((site / "api" / "index.html").as_uri())
    section = page.locator('div.doc-object:has(> h3[id="flyteplugins.mlflow.MlflowConfig"])')
    rows = section.locator("table").first.locator("tbody tr")
    by_name = {
        " ".join(row.locator("td").nth(0).inner_text().split()): row.inner_text() for row in rows.all()
    }
    assert set(by_name) >= {"run_mode", "tracking_uri", "request_timeout", "on_retry", "report_goal"}
    assert "4 s to connect" in by_name["request_timeout"]
    assert "float | None" in by_name["request_timeout"]
    assert "RunMode.AUTO" in by_name["run_mode"]
    raises = section.locator("table").filter(has_text="ValueError")
    assert raises.count() >= 1
    assert "names the field and the value" in raises.first.inner_text()
    call = page.locator('[id="flyteplugins.mlflow.MlflowRun.__call__"]')
    assert call.count() == 1, "decorating with a tracker (MlflowRun.__call__) is not documented"
    signature = section.locator(".doc-signature").first.inner_text()
    assert "request_retries: int | None = None" in " ".join(signature.split())
    _shows_png(page)
