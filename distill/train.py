"""`wm train tokenizer|teacher`: the two training stages before distillation.

Under torchrun the same command trains with DDP (gloo on CPU, nccl on CUDA):

    torchrun --nproc_per_node 2 -m distill.train teacher --data data/train ...
"""

from __future__ import annotations

import argparse
import importlib
import sys

from distill.common import teardown_distributed

STAGES = {
    "tokenizer": "distill.train_tokenizer",
    "teacher": "distill.train_teacher",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stage", required=True)
    for name, module in STAGES.items():
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0]))


def main(args: argparse.Namespace) -> int:
    try:
        return importlib.import_module(STAGES[args.stage]).main(args)
    finally:
        teardown_distributed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m distill.train")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
