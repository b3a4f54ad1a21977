"""One way to turn a config dataclass into command-line flags, for every `wm` command.

Each field becomes `--field-name` with the dataclass's type; booleans take `--x/--no-x`,
tuples a comma-separated list (`--horizons 1,4,16`).
With named presets a `--preset` flag picks the starting values, and flags left out keep
the preset's value (they are absent from the namespace rather than defaulted).

    add_config_arguments(parser, EvalConfig())                    # defaults from the dataclass
    add_config_arguments(parser, PRESETS["cpu"], presets=PRESETS)  # --preset NAME, then overrides
    cfg = config_from_args(EvalConfig, args)                      # or (..., presets=PRESETS)
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from typing import Any


def add_config_arguments(p: argparse.ArgumentParser, base: Any,
                         presets: dict[str, Any] | None = None,
                         choices: dict[str, list[str]] | None = None,
                         helps: dict[str, str] | None = None) -> None:
    """One --flag per field of `base` (a dataclass instance). With `presets`, `base` is the
    default preset and a --preset flag picks another."""
    if presets:
        default = next(name for name, value in presets.items() if value == base)
        p.add_argument("--preset", choices=sorted(presets), default=default,
                       help=f"named settings; any flag below overrides them (default: {default})")
    for f in fields(base):
        value = getattr(base, f.name)
        flag = "--" + f.name.replace("_", "-")
        text = ",".join(map(str, value)) if isinstance(value, tuple) else value
        shown = f"{'preset ' + default + ': ' if presets else 'default: '}{text}"
        help_ = f"{(helps or {})[f.name]} ({shown})" if f.name in (helps or {}) else shown
        default_value = argparse.SUPPRESS if presets else value
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default_value,
                           help=help_)
        elif isinstance(value, tuple):
            p.add_argument(flag, type=_comma_list(type(value[0]) if value else str),
                           default=default_value, help=help_)
        else:
            kind = type(value) if value is not None else str
            p.add_argument(flag, type=kind, default=default_value,
                           choices=(choices or {}).get(f.name), help=help_)


def _comma_list(kind: type):
    def parse(text: str) -> tuple:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    parse.__name__ = f"comma-separated {kind.__name__}"  # argparse names it in its errors
    return parse


def config_from_args(cls: type, args: argparse.Namespace,
                     presets: dict[str, Any] | None = None) -> Any:
    """The config that `args` (parsed with add_config_arguments) describes."""
    base = presets[args.preset] if presets else cls()
    return replace(base, **{f.name: getattr(args, f.name) for f in fields(cls)
                            if hasattr(args, f.name)})
