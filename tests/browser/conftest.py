"""The chat page in a real browser: Debian's Chromium driven by Playwright, against a real ``chiffon up``.

* ``lab`` starts ``chiffon up`` on a free port with a temporary ``--home`` (the
  helpers of ``tests/e2e``); ``start_lab`` starts one with options (an access
  token, another homelab-infra repo).
* ``page`` is a fresh browser context at 1280 by 800 on the session's Chromium
  (``/usr/bin/chromium``, headless, no network features). A JavaScript error on
  the page fails the test; a failing test leaves a screenshot behind.
* ``shot(page, name)`` saves a full-page screenshot under ``tests/browser/artifacts/``;
  every path saved is listed at the end of the run.

Without ``/usr/bin/chromium`` the tests skip with the reason ("install Debian
chromium") — except under CI (``$CI`` set), where they fail: CI must run them.
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, Chiffon, launch, stop

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VIEWPORT = {"width": 1280, "height": 800}
SAVED: list[Path] = []

__all__ = ["ARTIFACTS", "ROOT", "Chiffon", "shot"]


def shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot of the page as ``artifacts/<name>.png`` and say where it is."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    SAVED.append(path)
    print(f"screenshot: {path}")
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SAVED:
        terminalreporter.write_sep("-", "chat page screenshots")
        for path in SAVED:
            terminalreporter.write_line(str(path))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        why = f"{CHROMIUM} is missing: install Debian chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"the chat page tests need a browser under CI; {why}", pytrace=False)
        pytest.skip(f"install Debian chromium ({CHROMIUM} is missing)")
    return CHROMIUM


# Module-scoped, not session-scoped: Playwright's sync API keeps an event loop running in this
# thread while it is open, and every asyncio test collected after this module would fail with
# "cannot be called from a running event loop" if it stayed open to the end of the session.
@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        failed = getattr(request.node, "report_call", None)
        if failed is not None and failed.failed:
            try:
                shot(opened, f"FAILED-{request.node.name}")
            except Exception as exc:  # the screenshot must not hide the failure
                print(f"no screenshot of the failure: {exc}")
        context.close()


LabFactory = Callable[..., Chiffon]


@pytest.fixture
def start_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabFactory]:
    """``start_lab(token=…, infra_repo=…)``: a running ``chiffon up``; stopped after the test."""
    started: list[Chiffon] = []

    def launch_lab(*, token: str | None = None, infra_repo: Path | None = None) -> Chiffon:
        home = tmp_path / f"home{len(started)}"
        home.mkdir()
        if token is not None:
            # The server reads its chiffon.yaml; chiffonctl (Chiffon.ctl) sends $CHIFFON_TOKEN.
            (home / "chiffon.yaml").write_text(f"api_token: {token}\n")
            monkeypatch.setenv("CHIFFON_TOKEN", token)
        extra = ["--infra-repo", str(infra_repo)] if infra_repo is not None else []
        started.append(launch(home, *extra))
        return started[-1]

    try:
        yield launch_lab
    finally:
        stop(*started)


@pytest.fixture
def lab(start_lab: LabFactory) -> Chiffon:
    return start_lab()


def git_repo_copy(source: Path, target: Path) -> Path:
    """A git copy of a homelab-infra folder (everything committed), for ``--infra-repo``."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git", "__pycache__", ".ansible"))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Erin",
        "GIT_AUTHOR_EMAIL": "erin@example.com",
        "GIT_COMMITTER_NAME": "Erin",
        "GIT_COMMITTER_EMAIL": "erin@example.com",
    }
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "homelab-infra"]):
        subprocess.run(["git", *command], cwd=target, env=env, check=True, capture_output=True, timeout=30)
    return target
