"""The browser client in headless Chromium (Debian's, driven by Playwright) against a real
`wm play` process serving a tiny untrained checkpoint."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import av
import pytest

from tests.play_helpers import wait_for
from tests.test_server import spawn
from worldmodel.episode import Episode, read_actions
from worldmodel.session import make_random_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make browser)"
    ),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, recordings folder) of a `wm play` process."""
    root = tmp_path_factory.mktemp("browser")
    checkpoint = make_random_checkpoint(root / "tiny")
    proc, url = spawn("--checkpoint", str(checkpoint), "--recordings", str(root / "rec"))
    yield url, root / "rec"
    proc.terminate()
    proc.wait(timeout=30)
    proc.stdout.close()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 720},
            accept_downloads=True,
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(served[0] + "/?seed=3")
        yield page
        context.close()
        assert not errors, errors  # no script errors, no CSP violations


def stats(page) -> dict:
    return page.evaluate("() => window.wmStats")


def hud_frame(page) -> int:
    return int(page.text_content("#hud-frame") or -1)


def test_frames_reach_the_canvas(page):
    wait_for(lambda: stats(page)["framesDrawn"] >= 3, what="frames on the canvas")
    assert "tiny" in page.text_content("#model")
    first = hud_frame(page)
    wait_for(lambda: hud_frame(page) >= first + 5, what="the HUD frame counter to advance")
    page.click("#view-dream .screen")  # dismisses "click to play"; pointer lock may be refused
    assert page.is_hidden("#overlay")


def test_keys_reach_the_server_and_a_recording_downloads(page, served, tmp_path):
    rec_root = served[1]
    page.keyboard.press("KeyR")
    name = wait_for(lambda: stats(page)["recording"], what="recording to start")
    assert page.is_visible("#rec")
    page.keyboard.down("KeyW")
    time.sleep(0.6)
    page.keyboard.press("Space")
    page.keyboard.down("ArrowLeft")
    time.sleep(0.6)
    page.keyboard.up("ArrowLeft")
    page.keyboard.up("KeyW")
    time.sleep(0.3)
    page.keyboard.press("KeyR")
    wait_for(lambda: stats(page)["recording"] is None, what="recording to stop")
    link = f'#recording-list li[data-name="{name}"] a'
    page.wait_for_selector(link, timeout=30_000)

    # what the server recorded is what was pressed
    ep = Episode(rec_root / name)
    actions = read_actions(rec_root / name)
    forward, jump, yaw = actions[:, 0], actions[:, 4], actions[:, 6]
    assert ep.meta["complete"] and len(ep) >= 10
    assert forward.any() and jump.any() and (yaw < 0).any()

    page.evaluate("() => document.exitPointerLock()")  # what Esc does for a person
    with page.expect_download() as download:
        page.click(link)
    path = tmp_path / "download.mp4"
    download.value.save_as(path)
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(ep)

    s = stats(page)
    report = {k: s[k] for k in ("fps", "latencyMs", "genMs", "rttMs", "frame", "model")}
    print("\nbrowser HUD:", json.dumps(report))
    assert s["fps"] > 0 and s["latencyMs"] is not None


def test_side_by_side_shows_the_real_game(page):
    page.keyboard.press("KeyG")
    wait_for(lambda: stats(page)["gameFramesDrawn"] >= 3, what="frames of the real game")
    assert page.is_visible("#view-game") and stats(page)["sideBySide"]
    box_dream = page.locator("#dream").bounding_box()
    box_game = page.locator("#game").bounding_box()
    assert box_dream["width"] == box_game["width"] >= 256  # scaled up, side by side
    assert box_game["x"] > box_dream["x"] + box_dream["width"]
    page.keyboard.press("KeyG")
    wait_for(lambda: page.is_hidden("#view-game"), what="side by side to end")
