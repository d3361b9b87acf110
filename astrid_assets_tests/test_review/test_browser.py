"""The vetting page in headless Chromium (Debian's, driven by Playwright): sign in, label
five candidates from the keyboard, undo one, and see the counts follow."""

import os
import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from astrid_assets_tests.test_review.conftest import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def page(server):
    if not CHROMIUM.exists():
        pytest.fail(f"no {CHROMIUM}: `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 900})
        finally:
            browser.close()


def _loaded_width(image, timeout: float = 10.0) -> int:
    """The natural width of an image once the browser has decoded it (0 if it never does)."""
    deadline = time.monotonic() + timeout
    while True:
        width = image.evaluate("img => img.complete ? img.naturalWidth : -1")
        if width >= 0 or time.monotonic() > deadline:
            return width
        time.sleep(0.1)


def _keep(screenshot: Path) -> None:
    """Copy a screenshot to $ASTRID_TEST_ARTEFACTS when it is set."""
    folder = os.environ.get("ASTRID_TEST_ARTEFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, Path(folder) / screenshot.name)


def test_a_vetter_labels_five_candidates_from_the_keyboard_and_undoes_one(
    page, server, survey, tmp_path
):
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{server.url}/queue?order=uncertain")
    expect(page).to_have_url(f"{server.url}/login?next=%2Fqueue%3Forder%3Duncertain")
    page.fill("#name", "vera")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    expect(page.locator("#position")).to_have_text("1")
    expect(page.locator("#count-mine")).to_have_text("0")
    expect(page.locator("#facts")).to_contain_text("ensemble score")
    first = page.locator("#candidate-id").inner_text()

    keys = ["r", "b", "u", "r", "r"]
    seen = []
    for done, key in enumerate(keys, start=1):
        seen.append(page.locator("#candidate-id").inner_text())
        page.keyboard.press(key)
        expect(page.locator("#count-mine")).to_have_text(str(done))
        expect(page.locator("#position")).to_have_text(str(done + 1))
    expect(page.locator("#count-real")).to_have_text("3")
    expect(page.locator("#count-bogus")).to_have_text("1")
    expect(page.locator("#count-unsure")).to_have_text("1")
    assert seen[0] == first and len(set(seen)) == 5

    page.keyboard.press("z")
    expect(page.locator("#count-mine")).to_have_text("4")
    expect(page.locator("#count-real")).to_have_text("2")
    expect(page.locator("#status")).to_have_text(f"Undid real of {seen[-1]}.")
    expect(page.locator("#candidate-id")).to_have_text(seen[-1])  # back to relabel it
    expect(page.locator("#my-label")).to_have_text("not labelled by me")

    page.keyboard.press("ArrowLeft")
    expect(page.locator("#candidate-id")).to_have_text(seen[3])
    expect(page.locator("#my-label")).to_have_text("my label: real")
    page.keyboard.press("j")
    expect(page.locator("#candidate-id")).to_have_text(seen[4])
    for kind in ("science", "reference", "difference"):
        image = page.locator(f"#img-{kind}")
        expect(image).to_have_attribute("src", f"/cutouts/{seen[4]}/{kind}.png")
        assert _loaded_width(image) == 63

    screenshot = tmp_path / "review-after-undo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    _keep(screenshot)
    assert screenshot.stat().st_size > 10_000

    stored = survey.labels.all().filter(vetter="vera").sort("id")
    assert stored["candidate_id"].to_list() == seen[:4]
    assert stored["label"].to_list() == ["real", "bogus", "unsure", "real"]
    assert errors == []
