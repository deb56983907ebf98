"""The ``pairfree`` command: ``pairfree doctor``, ``pairfree demo``."""

from __future__ import annotations

import argparse
import json
import sys


def _doctor(args) -> int:
    from pairfree import doctor

    info = doctor.collect()
    print(json.dumps(info, indent=2) if args.json else doctor.format_report(info))
    return 0


def _demo(args) -> int:
    from pairfree import demo

    return demo.run(out_dir=args.out, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pairfree", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="versions, live kernel backends, GPU, known-bad combinations")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_doctor)

    p = sub.add_parser("demo", help="the furthest real pipeline available (see README)")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_demo)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
