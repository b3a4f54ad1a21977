// Browser client for `wm play`. The wire protocol is in docs/protocol.md: binary frame
// messages (a 24-byte header, then JPEG) come in; small JSON messages go out.
"use strict";

(() => {
  const HEADER_BYTES = 24;
  const STREAM_DREAM = 0;
  const STREAM_GAME = 1;
  const FLAG_RECORDING = 1;
  const PUMP_MS = 16; // input changes go out at most this often
  const HEARTBEAT_MS = 50; // and unchanged input this often, so latency is always measured
  const PING_MS = 2000;
  const LATENCY_SAMPLES = 30;
  const MAX_SEED = 2147483647;
  const HELP_SEEN = "wm-help-seen"; // localStorage: the help opens by itself on a first visit

  // held keys -> the input names the server knows (hello.keys)
  const KEYMAP = {
    KeyW: "forward", KeyS: "back", KeyA: "left", KeyD: "right",
    Space: "jump", ShiftLeft: "sprint", ShiftRight: "sprint",
    ArrowLeft: "turn_left", ArrowRight: "turn_right", ArrowUp: "look_up", ArrowDown: "look_down",
  };

  const $ = (id) => document.getElementById(id);
  const page = new URLSearchParams(location.search);
  const token = page.get("token");

  const stats = {
    connected: false, busy: false, model: null, mode: null, size: null,
    framesDrawn: 0, gameFramesDrawn: 0, fps: 0, latencyMs: null, genMs: null, rttMs: null,
    frame: 0, lastSeq: 0, inputsSent: 0, recording: null, paused: false, sideBySide: false,
    seed: null, slow: null, help: false, picker: false, fullscreen: false, pageToFirstFrameMs: null,
  };
  window.wmStats = stats; // read by the browser tests; handy in the console too

  let ws = null;
  let hello = null;
  let server = { paused: false, side_by_side: false, recording: null, seed: null };
  let recordingSince = 0;
  const held = new Set();
  const pressed = new Set(); // down at some moment since the last input sent: taps count
  let mouseDx = 0;
  let mouseDy = 0;
  let seq = 0;
  let lastSendAt = 0;
  let lastKeys = "";
  const sentAt = new Map(); // input seq -> performance.now() when sent
  const latencies = [];
  const drawTimes = [];
  let overlayKind = "connecting"; // connecting | start | closed | busy | null

  function withToken(path, params = {}) {
    const url = new URL(path, location.href);
    if (token) url.searchParams.set("token", token);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return url;
  }

  // ---------------------------------------------------------------- drawing

  // Decodes one stream's frames, one at a time, keeping only the newest waiting frame:
  // a slow decoder skips frames rather than falling behind.
  class StreamView {
    constructor(canvas, onDrawn) {
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.onDrawn = onDrawn;
      this.pending = null;
      this.busy = false;
    }

    push(header, jpeg) {
      this.pending = { header, jpeg };
      if (!this.busy) this.drain();
    }

    async drain() {
      this.busy = true;
      while (this.pending) {
        const { header, jpeg } = this.pending;
        this.pending = null;
        try {
          const bitmap = await createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }));
          if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
            this.canvas.width = bitmap.width;
            this.canvas.height = bitmap.height;
            layout();
          }
          this.ctx.drawImage(bitmap, 0, 0);
          bitmap.close();
          this.onDrawn(header);
        } catch (err) {
          console.warn("could not decode a frame", err);
        }
      }
      this.busy = false;
    }
  }

  const dreamView = new StreamView($("dream"), (h) => {
    const now = performance.now();
    if (stats.pageToFirstFrameMs === null) stats.pageToFirstFrameMs = now; // from navigation start
    stats.framesDrawn += 1;
    stats.frame = h.frame;
    stats.genMs = h.genMs;
    drawTimes.push(now);
    while (drawTimes.length && now - drawTimes[0] > 1000) drawTimes.shift();
    // input-to-frame latency: from sending an input to drawing the first frame made with it
    if (h.seq > stats.lastSeq) {
      const t0 = sentAt.get(h.seq);
      if (t0 !== undefined) {
        latencies.push(now - t0);
        if (latencies.length > LATENCY_SAMPLES) latencies.shift();
        const sorted = [...latencies].sort((a, b) => a - b);
        stats.latencyMs = sorted[sorted.length >> 1];
      }
      stats.lastSeq = h.seq;
      for (const s of sentAt.keys()) if (s <= h.seq) sentAt.delete(s);
    }
  });
  const gameView = new StreamView($("game"), () => { stats.gameFramesDrawn += 1; });

  function parseHeader(buf) {
    const v = new DataView(buf);
    return {
      version: v.getUint8(0),
      stream: v.getUint8(1),
      recording: (v.getUint8(2) & FLAG_RECORDING) !== 0,
      frame: v.getUint32(4, true),
      seq: v.getUint32(8, true),
      genMs: v.getFloat32(12, true),
      serverMs: v.getFloat64(16, true),
    };
  }

  // Integer scaling keeps every model pixel the same size on screen; the views stay square.
  function layout() {
    const stage = $("stage");
    const n = server.side_by_side ? 2 : 1;
    const size = $("dream").width;
    const gap = 20 * (n - 1);
    const availW = (stage.clientWidth - 24 - gap) / n - 2;
    const availH = stage.clientHeight - 24 - 28 - 2;
    const fit = Math.min(availW, availH) / size;
    const scale = fit >= 1 ? Math.floor(fit) : fit;
    for (const c of [$("dream"), $("game")]) {
      c.style.width = `${Math.round(size * scale)}px`;
      c.style.height = `${Math.round(size * scale)}px`;
    }
  }
  window.addEventListener("resize", layout);
  document.addEventListener("fullscreenchange", () => {
    stats.fullscreen = document.fullscreenElement === $("stage");
    $("btn-full").classList.toggle("on", stats.fullscreen);
    layout();
  });

  // ---------------------------------------------------------------- HUD and overlays

  function fmt(ms) {
    return ms === null || ms === undefined ? "–" : `${ms.toFixed(0)} ms`;
  }

  function updateHud() {
    const n = drawTimes.length;
    stats.fps = n > 1 ? (1000 * (n - 1)) / (drawTimes[n - 1] - drawTimes[0]) : 0;
    if (n && performance.now() - drawTimes[n - 1] > 1000) stats.fps = 0;
    $("hud-fps").textContent = server.paused ? "paused" : stats.fps.toFixed(1);
    $("hud-latency").textContent = fmt(stats.latencyMs);
    $("hud-gen").textContent = fmt(stats.genMs);
    $("hud-rtt").textContent = fmt(stats.rttMs);
    $("hud-frame").textContent = String(stats.frame);
    if (server.recording) {
      const s = Math.floor((performance.now() - recordingSince) / 1000);
      $("rec-time").textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    }
  }
  setInterval(updateHud, 250);

  function overlay(kind, title, text = "", button = null) {
    overlayKind = kind;
    $("overlay").hidden = kind === null;
    $("overlay-title").textContent = title || "";
    $("overlay-text").textContent = text;
    $("overlay-button").hidden = button === null;
    if (button) $("overlay-button").textContent = button;
  }

  let toastTimer = 0;
  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 3500);
  }

  function applyState(s) {
    const wasRecording = server.recording;
    server = s;
    if (s.recording && !wasRecording) {
      recordingSince = performance.now();
      refreshRecordings(); // lists it as in progress
    }
    stats.recording = s.recording;
    stats.paused = s.paused;
    stats.sideBySide = s.side_by_side;
    stats.seed = s.seed;
    $("btn-resync").hidden = !s.side_by_side;
    $("rec").hidden = !s.recording;
    $("paused").hidden = !s.paused;
    $("slow").hidden = !stats.slow || s.paused; // a paused world is not slow
    $("view-game").hidden = !s.side_by_side;
    $("btn-record").classList.toggle("on", !!s.recording);
    $("btn-pause").classList.toggle("on", s.paused);
    $("btn-side").classList.toggle("on", s.side_by_side);
    $("caption-dream").textContent = hello && hello.mode === "dream" ? `${hello.model} · seed ${s.seed}` : `seed ${s.seed}`;
    layout();
    updateHud();
  }

  // ---------------------------------------------------------------- connection

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  }

  function connect() {
    const url = withToken("ws", page.has("seed") ? { seed: page.get("seed") } : {});
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    overlay("connecting", "Connecting…");
    stats.busy = false;
    ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { stats.connected = true; };
    ws.onmessage = (e) => {
      if (typeof e.data === "string") {
        onJson(JSON.parse(e.data));
        return;
      }
      if (e.data.byteLength < HEADER_BYTES) return;
      const header = parseHeader(e.data);
      const jpeg = new Uint8Array(e.data, HEADER_BYTES);
      (header.stream === STREAM_GAME ? gameView : dreamView).push(header, jpeg);
    };
    ws.onclose = (e) => {
      stats.connected = false;
      held.clear();
      if (overlayKind === "busy") return;
      const why = e.reason || (e.code === 1006 ? "the server went away" : `code ${e.code}`);
      overlay("closed", "Disconnected", why, "Reconnect");
    };
  }

  function onJson(msg) {
    switch (msg.type) {
      case "hello":
        hello = msg;
        stats.model = msg.model;
        stats.mode = msg.mode;
        stats.size = msg.size;
        $("model").textContent = msg.mode === "game"
          ? `real game · ${msg.size}×${msg.size} · ${msg.fps} fps`
          : `model ${msg.model} · ${msg.size}×${msg.size} · ${msg.fps} fps · ${msg.checkpoint_hash.slice(0, 8)}`;
        $("btn-side").hidden = !msg.side_by_side;
        if (msg.mode === "game") {
          const tag = document.querySelector("#view-dream .tag");
          tag.textContent = "REAL GAME";
          tag.className = "tag game";
        }
        overlay("start", "Click to play", "WASD to move · mouse to look · Esc releases the mouse · ? all keys");
        break;
      case "state":
        applyState(msg);
        break;
      case "saved":
        toast(`saved recording ${msg.name} (${msg.frames} frames)`);
        refreshRecordings();
        break;
      case "slow":
        stats.slow = msg.on ? { fps: msg.fps, target: msg.target_fps } : null;
        $("slow").hidden = !stats.slow || server.paused;
        $("slow").textContent = `SLOW · the ${hello && hello.mode === "game" ? "game" : "model"} ` +
          `makes ${msg.fps.toFixed(1)} frames/s, ` +
          `below its ${msg.target_fps} frames/s: the world plays slower than real time`;
        break;
      case "pong":
        if (typeof msg.t === "number") stats.rttMs = performance.now() - msg.t;
        break;
      case "busy":
        stats.busy = true;
        overlay("busy", "Server busy", msg.error, "Try again");
        break;
      case "error":
        console.warn("server:", msg.error);
        toast(msg.error);
        break;
      default:
        console.warn("unknown message", msg);
    }
  }

  // ---------------------------------------------------------------- input

  function pump() {
    if (!ws || ws.readyState !== WebSocket.OPEN || !hello || server.paused) return;
    const now = performance.now();
    const keys = [...new Set([...held, ...pressed])].sort();
    const keyString = keys.join(",");
    const moved = mouseDx !== 0 || mouseDy !== 0;
    if (!moved && keyString === lastKeys && now - lastSendAt < HEARTBEAT_MS) return;
    seq += 1;
    const msg = { type: "input", seq, keys };
    if (mouseDx) msg.dx = mouseDx;
    if (mouseDy) msg.dy = mouseDy;
    ws.send(JSON.stringify(msg));
    pressed.clear();
    sentAt.set(seq, now);
    if (sentAt.size > 1000) sentAt.delete(sentAt.keys().next().value);
    stats.inputsSent += 1;
    lastSendAt = now;
    lastKeys = keyString;
    mouseDx = 0;
    mouseDy = 0;
  }
  setInterval(pump, PUMP_MS);
  setInterval(() => send({ type: "ping", t: performance.now() }), PING_MS);

  const controls = {
    KeyR: () => send({ type: "record", on: !server.recording }),
    KeyN: () => send({ type: "reset" }),
    KeyP: () => send({ type: "pause", on: !server.paused }),
    KeyG: () => {
      if (hello && !hello.side_by_side) toast("side by side needs a model: this server plays the real game");
      else send({ type: "side_by_side", on: !server.side_by_side });
    },
    KeyC: () => {
      if (!server.side_by_side) toast("resync works side by side: press G first");
      else send({ type: "resync" });
    },
    KeyO: () => openPicker(),
    KeyF: () => toggleFullscreen(),
    KeyH: () => showHelp(!stats.help),
  };

  // ---------------------------------------------------------------- help, picker, fullscreen

  function showHelp(on) {
    stats.help = on;
    $("help").hidden = !on;
    if (on) {
      localStorage.setItem(HELP_SEEN, "1");
      if (document.pointerLockElement) document.exitPointerLock();
    }
  }
  $("help-close").addEventListener("click", () => showHelp(false));
  $("help").addEventListener("click", (e) => { if (e.target === $("help")) showHelp(false); });

  function toggleFullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen();
      return;
    }
    const p = $("stage").requestFullscreen();
    if (p && p.catch) p.catch((err) => toast(`fullscreen refused: ${err.message}`));
  }

  function openPicker() {
    if (!hello) return;
    if (document.pointerLockElement) document.exitPointerLock();
    const worlds = hello.worlds;
    $("picker-text").textContent = worlds
      ? `This model was trained on ${worlds.length} world${worlds.length === 1 ? "" : "s"}; ` +
        "any other seed is a world it has never seen."
      : "This model declares no fixed worlds: any seed starts a procedural world.";
    $("picker-worlds").replaceChildren(...(worlds || []).map((seed) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `world ${seed}`;
      b.dataset.seed = String(seed);
      b.classList.toggle("on", seed === server.seed);
      b.addEventListener("click", () => pickWorld(seed));
      return b;
    }));
    $("picker-seed").max = String(MAX_SEED);
    $("picker-seed").value = server.seed === null ? "" : String(server.seed);
    stats.picker = true;
    $("picker").hidden = false;
    $("picker-seed").focus();
    $("picker-seed").select();
  }

  function closePicker() {
    stats.picker = false;
    $("picker").hidden = true;
    $("picker-seed").blur();
  }

  function pickWorld(seed) {
    closePicker();
    if (seed === null) {
      send({ type: "reset" });
      return;
    }
    send({ type: "reset", seed });
    const url = new URL(location.href);
    url.searchParams.set("seed", String(seed)); // a reload comes back to this world
    history.replaceState(null, "", url);
  }

  $("picker-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const seed = Number($("picker-seed").value);
    if (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
      toast(`a seed is a whole number from 0 to ${MAX_SEED}`);
      return;
    }
    pickWorld(seed);
  });
  $("picker-random").addEventListener("click", () => pickWorld(null));
  $("picker-close").addEventListener("click", closePicker);
  $("picker").addEventListener("click", (e) => { if (e.target === $("picker")) closePicker(); });

  document.addEventListener("pointerlockchange", () => {
    if (document.pointerLockElement === $("dream")) toast("mouse captured: Esc releases it");
  });

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (stats.picker) {
      if (e.code === "Escape") closePicker(); // Enter submits the form
      return; // typing a seed does not walk
    }
    if (e.key === "?" || (stats.help && e.code === "Escape")) {
      e.preventDefault();
      showHelp(e.key === "?" ? !stats.help : false);
      return;
    }
    if (stats.help && e.code !== "KeyH") return; // the help is read, not played through
    const name = KEYMAP[e.code];
    if (name) {
      e.preventDefault();
      held.add(name);
      pressed.add(name);
      if (overlayKind === "start") overlay(null);
      return;
    }
    if (controls[e.code]) {
      e.preventDefault();
      if (overlayKind === "start") overlay(null);
      if (!e.repeat) controls[e.code]();
    }
  });
  document.addEventListener("keyup", (e) => {
    const name = KEYMAP[e.code];
    if (name) held.delete(name);
  });
  window.addEventListener("blur", () => held.clear());

  const screen = $("dream").parentElement;
  screen.addEventListener("click", () => {
    if (overlayKind === "closed" || overlayKind === "busy") return;
    overlay(null);
    if (document.pointerLockElement !== $("dream")) {
      const p = $("dream").requestPointerLock();
      if (p && p.catch) p.catch(() => {}); // refused (e.g. headless): the keys still work
    }
  });
  document.addEventListener("mousemove", (e) => {
    if (document.pointerLockElement !== $("dream")) return;
    mouseDx += e.movementX;
    mouseDy += e.movementY;
  });

  $("overlay-button").addEventListener("click", (e) => {
    e.stopPropagation();
    connect();
  });
  const buttons = [
    ["btn-record", "KeyR"], ["btn-new", "KeyN"], ["btn-pick", "KeyO"], ["btn-pause", "KeyP"],
    ["btn-side", "KeyG"], ["btn-resync", "KeyC"], ["btn-full", "KeyF"], ["btn-help", "KeyH"],
  ];
  for (const [id, code] of buttons) {
    $(id).addEventListener("click", (e) => {
      controls[code]();
      e.currentTarget.blur(); // so that Space jumps instead of pressing the button again
    });
  }

  // ---------------------------------------------------------------- recordings

  async function refreshRecordings() {
    const list = $("recording-list");
    let items;
    try {
      const r = await fetch(withToken("recordings"), { cache: "no-store" });
      if (!r.ok) throw new Error(`${r.status}`);
      items = await r.json();
    } catch (err) {
      list.replaceChildren(li("could not list recordings", "dim"));
      return;
    }
    if (!items.length) {
      list.replaceChildren(li("none yet: press R while playing", "dim"));
      return;
    }
    list.replaceChildren(...items.map((rec) => {
      const item = document.createElement("li");
      item.dataset.name = rec.name;
      if (rec.video) {
        const a = document.createElement("a");
        a.href = withToken(`recordings/${encodeURIComponent(rec.name)}.mp4`).toString();
        a.download = `${rec.name}.mp4`;
        a.textContent = `⬇ ${rec.name}`;
        item.append(a);
      } else {
        item.append(document.createTextNode(rec.name));
      }
      const seconds = rec.duration_s.toFixed(1);
      const status = rec.complete ? "" : " · in progress";
      item.append(li(`${rec.source} · ${rec.frames} frames · ${seconds} s${status}`, "meta", "div"));
      return item;
    }));
  }

  function li(text, cls, tag = "li") {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }
  $("btn-refresh").addEventListener("click", refreshRecordings);

  connect();
  refreshRecordings();
  layout();
  if (!localStorage.getItem(HELP_SEEN)) showHelp(true);
})();
