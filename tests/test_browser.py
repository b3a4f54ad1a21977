"""The browser client in headless Chromium (Debian's, driven by Playwright) against a real
`wm play` process serving a tiny untrained checkpoint."""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from app.config import ServeConfig
from app.play import GameSession
from app.server import encode_jpeg
from tests.play_helpers import ServerThread, wait_for
from tests.test_server import spawn
from worldmodel.actions import NOOP, Action
from worldmodel.episode import Episode, read_actions
from worldmodel.game import Game
from worldmodel.session import make_random_checkpoint

WORLDS = [5, 11]  # the served checkpoint says it was trained on these

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
    meta = json.loads((checkpoint / "student.json").read_text())
    (checkpoint / "student.json").write_text(json.dumps(meta | {"worlds": WORLDS}))
    # a fixed cap, not one measured at start-up: a reload briefly holds two sessions
    proc, url = spawn("--checkpoint", str(checkpoint), "--recordings", str(root / "rec"),
                      "--max-sessions", "2")
    yield url, root / "rec"
    proc.terminate()
    proc.wait(timeout=30)
    proc.stdout.close()


@pytest.fixture(scope="module")
def context():
    """A browser profile of its own: a first visit."""
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
        yield context
        context.close()


def open_page(context, url: str):
    """(page, errors it logs: script errors and CSP violations)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(url)
    return page, errors


@pytest.fixture(scope="module")
def page(served, context):
    page, errors = open_page(context, served[0] + "/?seed=3")
    yield page
    page.close()
    assert not errors, errors


def stats(page) -> dict:
    return page.evaluate("() => window.wmStats")


def hud_frame(page) -> int:
    return int(page.text_content("#hud-frame") or -1)


def pixels(page, canvas: str) -> np.ndarray:
    """What a canvas shows, uint8 [H, W, 3]."""
    w, h, data = page.evaluate(
        """(id) => { const c = document.getElementById(id);
             const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
             return [c.width, c.height, Array.from(d)]; }""",
        canvas,
    )
    return np.asarray(data, np.uint8).reshape(h, w, 4)[..., :3]


def as_sent(frame: np.ndarray) -> np.ndarray:
    """A frame as the page gets it: the server's JPEG of it, decoded."""
    return np.asarray(Image.open(io.BytesIO(encode_jpeg(frame, ServeConfig.jpeg_quality))))


def context_frames(seed: int, size: int, k: int, steps: list[Action]) -> list[np.ndarray]:
    """The real game as a session starts it (its reset frame, then k - 1 frames of no
    input) and then plays it under steps."""
    game = Game(seed, size)
    frames = [game.reset()] + [game.step(NOOP) for _ in range(k - 1)]
    return frames + [game.step(a) for a in steps]


def test_help_opens_on_a_first_visit_and_the_rec_badge_hides(page):
    page.wait_for_selector("#help", state="visible", timeout=30_000)  # a first visit
    assert page.is_hidden("#rec")  # nothing is being recorded
    for key in ("KeyW", "KeyR"):
        page.keyboard.press(key)  # the help is read, not played through
    assert stats(page)["recording"] is None and page.is_visible("#help")
    page.keyboard.press("KeyH")
    assert page.is_hidden("#help")
    page.keyboard.press("?")
    assert page.is_visible("#help")
    text = page.text_content("#help")
    for key in ("WASD", "Space", "Shift", "Esc", "R", "N", "O", "P", "G", "C", "F", "?"):
        assert key in text.replace("</kbd><kbd>", "")
    assert "Esc" in text and "capture the mouse" in text
    page.keyboard.press("Escape")
    assert page.is_hidden("#help")
    page.reload()  # seen once: it does not come back by itself
    wait_for(lambda: stats(page)["framesDrawn"] >= 1, what="frames after the reload")
    assert page.is_hidden("#help")


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
    assert page.is_hidden("#rec")  # the badge goes with the recording

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


def test_the_hud_says_paused(page):
    wait_for(lambda: page.text_content("#hud-fps") not in ("–", "0.0"), what="an fps figure")
    page.keyboard.press("KeyP")
    wait_for(lambda: stats(page)["paused"], what="pause")
    assert page.text_content("#hud-fps") == "paused" and page.is_visible("#paused")
    page.keyboard.press("KeyP")
    wait_for(lambda: page.text_content("#hud-fps") not in ("paused", "0.0"), what="fps again")


def test_fullscreen_keeps_the_picture_square_and_pixelated(page):
    small = page.locator("#dream").bounding_box()
    page.keyboard.press("KeyF")
    wait_for(lambda: page.evaluate("() => document.fullscreenElement?.id") == "stage",
             what="fullscreen")
    wait_for(lambda: stats(page)["fullscreen"], what="the page to see it")
    box = page.locator("#dream").bounding_box()
    assert box["width"] == box["height"] >= small["width"]
    rendering = page.evaluate("() => getComputedStyle(document.getElementById('dream')).imageRendering")
    assert rendering == "pixelated"
    page.keyboard.press("KeyF")
    wait_for(lambda: page.evaluate("() => document.fullscreenElement") is None, what="exit")


def test_the_picker_starts_the_chosen_world(page):
    page.keyboard.press("KeyP")  # paused, the first frame of the new world stays on screen
    wait_for(lambda: stats(page)["paused"], what="pause")
    page.keyboard.press("KeyO")
    assert page.is_visible("#picker")
    assert "trained on 2 worlds" in page.text_content("#picker-text")
    buttons = page.locator("#picker-worlds button")
    assert [buttons.nth(i).text_content() for i in range(buttons.count())] == ["world 5", "world 11"]
    page.click('#picker-worlds button[data-seed="11"]')
    assert page.is_hidden("#picker")
    wait_for(lambda: stats(page)["seed"] == 11 and stats(page)["frame"] == 0, what="world 11")
    time.sleep(0.3)  # the frame is decoded after the state arrives
    size = stats(page)["size"]
    k = 2  # the tiny checkpoint's context length
    shown = pixels(page, "dream").astype(int)
    want = as_sent(context_frames(11, size, k, [])[-1]).astype(int)
    other = as_sent(context_frames(5, size, k, [])[-1]).astype(int)
    assert np.abs(shown - want).max() <= 2  # the game's frame (decoders may round apart)
    assert np.abs(shown - other).mean() > 10

    # any seed, typed; a reload comes back to it
    page.keyboard.press("KeyO")
    page.fill("#picker-seed", "1234")
    page.keyboard.press("Enter")
    wait_for(lambda: stats(page)["seed"] == 1234, what="world 1234")
    assert "seed=1234" in page.url
    time.sleep(0.3)
    shown = pixels(page, "dream").astype(int)
    assert np.abs(shown - as_sent(context_frames(1234, size, k, [])[-1]).astype(int)).max() <= 2
    page.keyboard.press("KeyP")
    wait_for(lambda: not stats(page)["paused"], what="resume")


def test_resync_restarts_the_dream_from_the_game(page, served):
    page.keyboard.press("KeyC")
    wait_for(lambda: "press G" in (page.text_content("#toast") or ""), what="the resync hint")
    old = stats(page)["seed"]
    page.keyboard.press("KeyN")  # a fresh world: no input yet, so every action so far is none
    wait_for(lambda: stats(page)["seed"] != old, what="a new world")
    seed = stats(page)["seed"]
    page.keyboard.press("KeyG")
    wait_for(lambda: stats(page)["gameFramesDrawn"] >= 3 and stats(page)["sideBySide"],
             what="side by side")
    page.keyboard.press("KeyR")
    name = wait_for(lambda: stats(page)["recording"], what="recording to start")
    page.keyboard.down("KeyW")
    page.keyboard.down("ArrowLeft")
    time.sleep(0.8)
    page.keyboard.up("ArrowLeft")
    page.keyboard.up("KeyW")
    page.keyboard.press("KeyP")
    wait_for(lambda: stats(page)["paused"], what="pause")
    time.sleep(0.3)
    assert np.abs(pixels(page, "dream").astype(int) - pixels(page, "game")).mean() > 2
    page.keyboard.press("KeyC")  # the dream restarts on the game's frame
    wait_for(lambda: np.array_equal(pixels(page, "dream"), pixels(page, "game")),
             what="the dream to show the game's frame")
    page.keyboard.press("KeyP")
    wait_for(lambda: stats(page)["frame"] >= 5, what="frames after the resync")
    time.sleep(0.5)
    page.keyboard.press("KeyR")
    wait_for(lambda: stats(page)["recording"] is None, what="recording to stop")
    page.keyboard.press("KeyG")

    # the new context is the real game's: played here from the seed with the same actions
    rec = served[1] / name
    wait_for(lambda: Episode(rec).meta.get("complete"), what="the recording to close")
    ep = Episode(rec)
    lines = [json.loads(line) for line in (rec / "actions.jsonl").read_text().splitlines()]
    (at,) = [i for i, line in enumerate(lines) if "resync" in line]
    note = lines[at]["resync"]
    before = [NOOP] * ep.meta["start_frame"] + [Action.from_dict(x["action"]) for x in lines[:at]]
    assert any(a != NOOP for a in before)  # the player moved before the resync
    k = note["frames"]
    want = context_frames(seed, ep.size, k, before)[-k:]
    got = np.fromfile(rec / "resync.u8", np.uint8).reshape(-1, ep.size, ep.size, 3)
    np.testing.assert_array_equal(got, np.stack(want))
    assert [Action.from_dict(a) for a in note["actions"]] == ([NOOP] * k + before)[-k:]


class ThrottledGame(GameSession):
    """The real game, taking three frame periods a step."""

    def step(self, action):
        time.sleep(3 / self.fps)
        return super().step(action)


def test_the_page_says_when_generation_cannot_keep_up(context, tmp_path):
    cfg = ServeConfig(port=0, game=True, size=32, recordings=tmp_path, max_sessions=2)
    with ServerThread(cfg, lambda: ThrottledGame(32)) as srv:
        page, errors = open_page(context, srv.url + "/")
        page.wait_for_selector("#slow", state="visible", timeout=30_000)
        text = page.text_content("#slow")
        slow = stats(page)["slow"]
        if page.is_visible("#help"):  # a first visit to this origin
            page.keyboard.press("KeyH")
        page.keyboard.press("KeyP")  # a paused world is not slow
        wait_for(lambda: page.is_hidden("#slow"), what="the notice to hide while paused")
        page.keyboard.press("KeyP")
        page.wait_for_selector("#slow", state="visible", timeout=30_000)
        page.close()
    assert slow["target"] == Game.fps and slow["fps"] < Game.fps / 2
    assert "SLOW" in text and f"{slow['fps']:.1f}" in text
    assert not errors, errors
