"""Average two students' weights (a model soup): both must share a network, for example two
DMD runs started from the same student.

    python scripts/average_students.py A B OUT [SHARE_OF_A]

A and B are student checkpoint stems (e.g. assets/default/student, runs/e3/wm/student);
OUT's sidecar is B's, with the averaging recorded. SHARE_OF_A defaults to 0.5. Pack OUT
to play or evaluate it: `wm distill pack --student OUT --tokenizer assets/default/tokenizer
--out WM`.
"""

from __future__ import annotations

import sys

from worldmodel import checkpoint


def main(a: str, b: str, out: str, share: float = 0.5) -> None:
    if not 0.0 <= share <= 1.0:
        raise SystemExit(f"SHARE_OF_A must be in [0, 1], got {share}")
    wa, ma = checkpoint.load(a)
    wb, mb = checkpoint.load(b)
    if ma.get("model") != mb.get("model") or wa.keys() != wb.keys():
        raise SystemExit(f"{a} and {b} are not the same network")
    mixed = {k: (share * wa[k].float() + (1 - share) * wb[k].float()).to(wa[k].dtype)
             if wa[k].is_floating_point() else wb[k] for k in wa}
    checkpoint.save(out, mixed, {**mb, "averaged": {"a": a, "b": b, "share_of_a": share}})
    print(f"student written to {out} ({share:g} of {a}, {1 - share:g} of {b})")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    main(*sys.argv[1:4], *(float(x) for x in sys.argv[4:]))
