"""Rows of the levers table in docs/benchmarks.md from `wm eval --quick` folders.

    python scripts/levers_table.py "row name=runs/lv/base/eval" ["name=folder" ...]

Columns as the table's: stand in the trained-on world (PSNR@1/4/16/64), walk there @16
(student / repeat), stand and walk in the never-trained-on world @16, teacher-forced one-step
in the trained-on world (student / repeat), the stage table's student row (IDM forward
accuracy (chance) / yaw sign), the long session's late realism (best control), and the
eval's seconds. A folder without the teacher and init streams gives the same columns.
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


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for arg in argv:
        name, _, folder = arg.rpartition("=")
        r = json.loads((Path(folder) / "eval.json").read_text())
        print(f"| {name or folder} | " + " | ".join(cells(r)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
