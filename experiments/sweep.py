"""Run an ablation grid: `python experiments/sweep.py ablation=schedule` (the same as `bacl-sweep`; `--help` lists the rest)."""
import sys

from bacl.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
