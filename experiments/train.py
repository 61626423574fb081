"""Train one run: `python experiments/train.py method=bacl` (the same as `bacl-train`; `--help` lists the keys)."""
import sys

from bacl.cli.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
