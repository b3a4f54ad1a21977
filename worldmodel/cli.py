"""The `wm` command. Each subcommand lives in its own module with `add_arguments(parser)` and
`main(args)`; it is imported only when run, so `wm --help` is instant and a machine without
the app's packages can still train. Modules are named by string: this dispatcher is the
one place that reaches into `app` and `distill`, and it does so only on demand.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("app.server", "serve the world model to the browser client"),
    "game": ("app.game_window", "play the ground-truth procedural game in a pygame window"),
    "collect": ("distill.collect", "collect episodes from the game with exploration policies"),
    "train": ("distill.train", "train the tokenizer or the teacher (wm train tokenizer|teacher)"),
    "cache-latents": ("distill.cache_latents", "encode a dataset once with a trained tokenizer"),
    "sample": ("distill.sample", "roll out a model from real context; video next to the game"),
    "distill": ("distill.distill", "distil the teacher into the few-step causal student"),
    "eval": ("distill.eval", "measure a checkpoint against the real game"),
    "bench": ("worldmodel.bench", "measure speed and memory of the student and the teacher"),
    "ui": ("app.studio", "gradio studio: recordings, replay, dreams, model card"),
    "pygame": ("app.pygame_client", "desktop client for the server (or --local)"),
    "replay": ("app.replay", "regenerate a recording and check or export it"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: wm <command> [options]\n\ncommands:\n{rows}\n\n`wm <command> --help` for options."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"wm {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
