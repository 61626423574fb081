"""Extract features and the pool: `python experiments/extract.py dataset=laion400m dataset.root=DIR` (= `bacl-extract`)."""
import sys

from bacl.cli.extract import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
