"""`wm game`: play the ground-truth procedural game in a pygame window, and record episodes.

    wm game --seed 3 --size 128 --scale 4

Keys: WASD walk and strafe, arrows turn and look, mouse looks once the window is clicked
(Esc lets the mouse go; Esc again quits), Space jumps, Shift sprints, N starts the next
world, R starts or stops recording into --recordings. A recording is an episode (see
worldmodel.episode): its first frame is the one on screen when recording began, and its
meta.json holds the game state at that frame, so `Game(seed, size).restore(meta["start"])`
followed by its actions replays it exactly.

Headless smoke run: SDL_VIDEODRIVER=dummy wm game --frames 20 --record
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldmodel.actions import Action
from worldmodel.episode import EpisodeWriter
from worldmodel.flags import add_config_arguments, config_from_args
from worldmodel.game import Game

WINDOW = 512  # default window side in pixels
KEY_TURN = 0.6  # yaw / pitch per frame while an arrow key is held
MOUSE_TURN = 0.02  # yaw / pitch per pixel of mouse motion


@dataclass
class GameWindowConfig:
    seed: int = 0  # N moves to the next one
    size: int = 64  # frame side in pixels
    scale: int | None = None  # window pixels per frame pixel; None: about WINDOW px
    recordings: Path = Path("recordings")
    record: bool = False  # start recording at once
    frames: int | None = None  # quit after this many frames, with no input (smoke tests)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, GameWindowConfig(), helps={
        "seed": "world seed (N moves to the next one)",
        "size": "frame side in pixels",
        "scale": f"window pixels per frame pixel; about {WINDOW} px when not given",
        "recordings": "folder for recordings",
        "record": "start recording at once",
        "frames": "quit after this many frames, with no input (smoke tests)",
    })  # fmt: skip


class Recorder:
    """An EpisodeWriter in a new folder per recording, named by the time it started."""

    def __init__(self, out: Path):
        self.out = out
        self.writer: EpisodeWriter | None = None

    def start(self, game: Game, frame: np.ndarray, action: Action) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = self.out / f"game-{stamp}", 1
        while path.exists():
            n += 1
            path = self.out / f"game-{stamp}-{n}"
        self.writer = EpisodeWriter(
            path,
            game.size,
            game.fps,
            seed=game.seed,
            source="game",
            policy="human",
            start=game.state(),
        )
        self.writer.append(frame, action)
        return path

    def append(self, frame: np.ndarray, action: Action) -> None:
        if self.writer is not None:
            self.writer.append(frame, action)

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            print(f"recorded {self.writer.count} frames to {self.writer.path}")
            self.writer = None

    @property
    def on(self) -> bool:
        return self.writer is not None


def read_input(pygame, grabbed: bool) -> Action:
    keys = pygame.key.get_pressed()
    yaw = KEY_TURN * (keys[pygame.K_RIGHT] - keys[pygame.K_LEFT])
    pitch = KEY_TURN * (keys[pygame.K_UP] - keys[pygame.K_DOWN])
    if grabbed:
        dx, dy = pygame.mouse.get_rel()
        yaw += MOUSE_TURN * dx
        pitch -= MOUSE_TURN * dy
    return Action(
        forward=bool(keys[pygame.K_w]),
        back=bool(keys[pygame.K_s]),
        left=bool(keys[pygame.K_a]),
        right=bool(keys[pygame.K_d]),
        jump=bool(keys[pygame.K_SPACE]),
        sprint=bool(keys[pygame.K_LSHIFT] or keys[pygame.K_RSHIFT]),
        yaw=float(np.clip(yaw, -1, 1)),
        pitch=float(np.clip(pitch, -1, 1)),
    )


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    cfg = config_from_args(GameWindowConfig, args)
    if cfg.frames is not None and cfg.frames < 0:
        raise SystemExit("--frames must be >= 0")
    if cfg.scale is not None and cfg.scale < 1:
        raise SystemExit("--scale must be >= 1")
    try:
        game = Game(cfg.seed, cfg.size)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"wm game: {e}") from None
    scale = cfg.scale or max(1, WINDOW // cfg.size)
    side = cfg.size * scale

    pygame.display.init()  # not pygame.init(): no sound, so no audio device is needed
    pygame.font.init()
    try:
        screen = pygame.display.set_mode((side, side))
        pygame.display.set_caption("wm game")
        font = pygame.font.Font(None, 20)
        clock = pygame.time.Clock()
        recorder = Recorder(cfg.recordings)
        action = Action()
        frame = game.reset()
        if cfg.record:
            print(f"recording to {recorder.start(game, frame, action)}")
        grabbed, running, count = False, True, 0

        def set_grab(on: bool) -> None:
            nonlocal grabbed
            grabbed = on
            pygame.event.set_grab(on)
            pygame.mouse.set_visible(not on)
            pygame.mouse.get_rel()  # drop the motion gathered before

        while running and (cfg.frames is None or count < cfg.frames):
            for event in pygame.event.get():
                if event.type == pygame.QUIT:
                    running = False
                elif event.type == pygame.MOUSEBUTTONDOWN and not grabbed:
                    set_grab(True)
                elif event.type == pygame.KEYDOWN:
                    if event.key == pygame.K_ESCAPE:
                        if grabbed:
                            set_grab(False)
                        else:
                            running = False
                    elif event.key == pygame.K_r:
                        if recorder.on:
                            recorder.stop()
                        else:
                            print(f"recording to {recorder.start(game, frame, action)}")
                    elif event.key == pygame.K_n:
                        was_recording = recorder.on
                        recorder.stop()
                        game = Game(game.seed + 1, cfg.size)
                        action, frame = Action(), game.reset()
                        if was_recording:  # one episode never spans two worlds
                            print(f"recording to {recorder.start(game, frame, action)}")
            if not running:
                break

            action = Action() if cfg.frames is not None else read_input(pygame, grabbed)
            frame = game.step(action)
            recorder.append(frame, action)
            count += 1

            surface = pygame.surfarray.make_surface(frame.swapaxes(0, 1))
            screen.blit(pygame.transform.scale(surface, (side, side)), (0, 0))  # nearest neighbour
            hud = f"{clock.get_fps():4.1f} fps  seed {game.seed}"
            screen.blit(font.render(hud, True, (255, 255, 255), (0, 0, 0)), (4, 4))
            if recorder.on:
                pygame.draw.circle(screen, (230, 30, 30), (side - 14, 14), 7)
                screen.blit(font.render("REC", True, (230, 30, 30)), (side - 50, 7))
            pygame.display.flip()
            clock.tick(game.fps)
        recorder.stop()
    finally:
        pygame.quit()
    return 0
