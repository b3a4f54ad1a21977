"""ServeConfig: the settings of a play session and of the server that hosts it (`wm play`,
`wm pygame --local`). Every field is a flag of `wm play` (worldmodel.flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0 picks a free port
    checkpoint: str = "default"
    device: str = "cpu"
    game: bool = False  # serve the real game instead of a model
    size: int = 64  # frame side of the real game with --game
    token: str | None = None
    max_sessions: int | None = None  # None: what the device holds at the play rate, measured
    capacity_cache: Path = Path("~/.cache/worldmodel/capacity.json")  # that measurement, kept
    recordings: Path = Path("recordings")
    fps: float | None = None  # cap on frames per second; None: the world's own fps
    allow_origin: tuple[str, ...] = ()  # besides the server's own origin
    jpeg_quality: int = 90
    rate_limit: float = 120.0  # client messages per second, with a burst of the same size
    mouse_px_per_unit: float = 60.0  # mouse pixels in one frame that make a full-speed turn
    arrow_rate: float = 0.5  # yaw/pitch while an arrow key is held
    record_video: bool = True
    threads: int | None = None  # torch threads on CPU; None: every core
    reset_rate: float = 2.0  # resets per second (each costs a prefill), bursts of the same size
    flood_close_s: float = 5.0  # close a client that sends twice the rate limit this long
    read_stall_s: float = 2.0  # stop generating while a client answers no ping this long
    idle_timeout: float = 20.0  # end a session with no messages and no reads this long
    max_session_recordings: int = 20  # recordings one session may make
    max_session_recording_mb: float = 1024.0  # megabytes one session may record
    max_recordings: int = 500  # recordings kept in the folder at most
    max_recordings_mb: float = 10240.0  # megabytes all recordings may take

    def __post_init__(self) -> None:
        if self.threads is None:
            # all sessions step on the one scheduler thread of their BatchedWorld
            self.threads = os.cpu_count() or 1
        self.recordings = Path(self.recordings)
        self.capacity_cache = Path(self.capacity_cache).expanduser()
        self.allow_origin = tuple(self.allow_origin)
        if self.token is not None and not self.token:
            raise ValueError("an empty --token would let anyone in; give a real one or none")
        for name in ("rate_limit", "reset_rate", "flood_close_s", "read_stall_s", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
