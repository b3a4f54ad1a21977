"""One way to turn a config dataclass into command-line flags, for every `wm` command.

Each field becomes `--field-name` with the dataclass's type (`int | None` takes an int;
left out, it stays None); booleans take `--x/--no-x`; a tuple field is a repeatable flag
whose values may also come comma-separated (`--horizons 1,4,16` = `--horizons 1 --horizons 4 ...`).
With named presets a `--preset` flag picks the starting values, and flags left out keep
the preset's value (they are absent from the namespace rather than defaulted).

    add_config_arguments(parser, EvalConfig())                    # defaults from the dataclass
    add_config_arguments(parser, PRESETS["cpu"], presets=PRESETS)  # --preset NAME, then overrides
    cfg = config_from_args(EvalConfig, args)                      # or (..., presets=PRESETS)
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields, replace
from typing import Any


def _value_type(annotation: Any) -> Any:
    """int for `int`, `int | None` and `Optional[int]`; tuple for `tuple[str, ...]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation


def _item_type(annotation: Any) -> Any:
    """str for `tuple[str, ...]`."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return args[0] if args else str


def _items(kind: Any):
    """argparse type for one occurrence of a tuple flag: its comma-separated items."""
    def parse(text: str) -> list:
        return [kind(x) for x in text.split(",") if x.strip()]
    parse.__name__ = f"comma-separated {kind.__name__}"  # argparse names it in its errors
    return parse


def add_config_arguments(p: argparse.ArgumentParser, base: Any,
                         presets: dict[str, Any] | None = None,
                         choices: dict[str, list[str]] | None = None,
                         helps: dict[str, str] | None = None,
                         parsers: dict[str, Any] | None = None) -> None:
    """One --flag per field of `base` (a dataclass instance). With `presets`, `base` is the
    default preset and a --preset flag picks another. `parsers` gives a field a function of
    its own that turns the flag's text into the value (e.g. ranges such as 7-9)."""
    if presets:
        default = next(name for name, value in presets.items() if value == base)
        p.add_argument("--preset", choices=sorted(presets), default=default,
                       help=f"named settings; any flag below overrides them (default: {default})")
    hints = typing.get_type_hints(type(base))
    for f in fields(base):
        value = getattr(base, f.name)
        kind = _value_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = ",".join(map(str, value)) if isinstance(value, tuple) else value
        shown = f"{'preset ' + default + ': ' if presets else 'default: '}{text}"
        help_ = f"{(helps or {})[f.name]} ({shown})" if f.name in (helps or {}) else shown
        default_value = argparse.SUPPRESS if presets else value
        if f.name in (parsers or {}):
            p.add_argument(flag, type=parsers[f.name], default=default_value, help=help_)
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default_value,
                           help=help_)
        elif kind is tuple:  # repeatable; the items given replace the default's
            p.add_argument(flag, action="extend", type=_items(_item_type(hints[f.name])),
                           default=argparse.SUPPRESS, help=help_ + " (repeatable)")
        else:
            p.add_argument(flag, type=kind, default=default_value,
                           choices=(choices or {}).get(f.name), help=help_)


def config_from_args(cls: type, args: argparse.Namespace,
                     presets: dict[str, Any] | None = None) -> Any:
    """The config that `args` (parsed with add_config_arguments) describes."""
    base = presets[args.preset] if presets else cls()
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
