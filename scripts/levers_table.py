"""Rows of the levers table in docs/benchmarks.md from `wm eval --quick` folders.

    python scripts/levers_table.py "row name=runs/lv/base/eval" ["name=folder" ...]

Columns as the table's: stand in the trained-on world (PSNR@1/4/16/64), walk there @16
(student / repeat), stand and walk in the never-trained-on world @16, teacher-forced one-step
in the trained-on world (student / repeat), the stage table's student row (IDM forward
accuracy (chance) / yaw sign), the long session's late realism (best control), and the
eval's seconds. A folder without the teacher and init streams gives the same columns.

    python scripts/levers_table.py --teacher "row name=runs/lv/t-base" [...]

prints a teacher's row instead, from an eval with the teacher stream (see the teacher table
in docs/benchmarks.md for the command): stand, walk and turn in both worlds at frames 1/4/16
(teacher / repeat at 16), its teacher-forced one-step (teacher / repeat) and the IDM's
forward accuracy (chance) and yaw sign on its walk and turn frames.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cells(r: dict) -> list[str]:
    seen = r["seen"]["probes"]
    stand = seen["stand"]["streams"]["student"]["psnr"]
    walk = seen["walk"]["streams"]
    unseen = r["probes"]
    one = r["seen"]["one_step"]["streams"]
    row = next(x for x in r["stage_table"] if x["stream"] == "student")
    s = r["stability"]
    return [
        "/".join(f"{stand[h]:.1f}" for h in ("1", "4", "16", "64")),
        f"{walk['student']['psnr']['16']:.1f} / {walk['baseline']['psnr']['16']:.1f}",
        f"{unseen['stand']['streams']['student']['psnr']['16']:.1f}",
        f"{unseen['walk']['streams']['student']['psnr']['16']:.1f} / "
        f"{unseen['walk']['streams']['baseline']['psnr']['16']:.1f}",
        f"{one['student']['psnr']:.2f} / {one['baseline']['psnr']:.2f}",
        f"{row['forward_acc']:.2f} ({row['forward_chance']:.2f}) / {row['yaw_sign_acc']:.2f}",
        f"{s['realism_late']:.2f} ({s['control_realism_late']:.2f})",
        f"{r['time_s']:.0f}",
    ]


def teacher_cells(r: dict) -> list[str]:
    out = []
    for probes in (r["seen"]["probes"], r["probes"]):
        for probe in ("stand", "walk", "turn"):
            s = probes[probe]["streams"]
            t, b = s["teacher"]["psnr"], s["baseline"]["psnr"]
            hs = [h for h in ("1", "4", "16") if h in t]
            out.append("/".join(f"{t[h]:.1f}" for h in hs) + f" ({b[hs[-1]]:.1f})")
    one = r["seen"]["one_step"]["streams"]
    out.append(f"{one['teacher']['psnr']:.2f} / {one['baseline']['psnr']:.2f}")
    seen = r["seen"]["probes"]
    for probe in ("walk", "turn"):
        idm = seen[probe]["streams"]["teacher"]["idm"]
        out.append(f"{idm['forward_acc']:.2f} ({idm['forward_chance']:.2f}) / "
                   f"{idm['yaw_sign_acc']:.2f}")
    return out


def main(argv: list[str]) -> int:
    teacher = bool(argv) and argv[0] == "--teacher"
    argv = argv[1:] if teacher else argv
    if not argv:
        print(__doc__)
        return 2
    for arg in argv:
        name, _, folder = arg.rpartition("=")
        r = json.loads((Path(folder) / "eval.json").read_text())
        row = teacher_cells(r) if teacher else cells(r)
        print(f"| {name or folder} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
