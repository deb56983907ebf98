"""``deepspeed [--num_gpus N] [--hostfile H] --module pairfree.train --config configs/shapes/editor.yaml``."""

import sys

from pairfree.train.run import main

if __name__ == "__main__":
    sys.exit(main())
