"""``python -m pairfree.train.paired ...`` = ``pairfree train ... --set trainer=paired`` (the supervised yardstick)."""

import sys

from pairfree.train.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], "paired", prog="python -m pairfree.train.paired"))
