"""The train split's candidate pool built out of core (bacl/data/pool_out_of_core.py), in three steps
that a SLURM array shares; each takes the run-config overrides the extraction was given:

    python -m bacl.cli.pool prepare [--chunk N] dataset=laion400m dataset.root=DIR pool.index.kind=ivfpq ...
    python -m bacl.cli.pool part --parts P [--part p] [--chunk N] <the same overrides>
    python -m bacl.cli.pool finish --parts P <the same overrides>

`part` without --part takes p from $SLURM_ARRAY_TASK_ID (sbatch --array=0-<P-1>). `--chunk`: rows
read and searched at a time; it and --parts default to pool.out_of_core_chunk (100,000) and
pool.out_of_core_parts (0 reads as 1), what `bacl-extract pool.out_of_core_parts=P` submits.
Exit codes: 0 done, 2 bad input (a part run with settings other than prepare's, a part missing at finish, shards not extracted).
"""
from __future__ import annotations

import argparse
import os
import sys

from bacl.config import load_config
from bacl.data.pool_out_of_core import finish, prepare, search_part, validate_out_of_core
from bacl.data.store import StoreMissing
from bacl.errors import ConfigError, require
from bacl.extract import open_store


def _part(given: int | None) -> int:
    if given is not None:
        return given
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None or not task.isdigit():
        raise ConfigError("part: expected --part or $SLURM_ARRAY_TASK_ID (run it as an sbatch --array task)")
    return int(task)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bacl.cli.pool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("prepare", "part", "finish"))
    parser.add_argument("--parts", type=int)
    parser.add_argument("--part", type=int)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("overrides", nargs="*", help="run-config key=value overrides")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.overrides)
        parts = args.parts if args.parts is not None else validate_out_of_core(cfg.pool) or 1
        chunk = args.chunk if args.chunk is not None else cfg.pool.out_of_core_chunk
        require(chunk >= 1, "--chunk", chunk, ">= 1 rows at a time")
        _, store, _ = open_store(cfg)
        if args.step == "prepare":
            print(prepare(store, cfg.pool, chunk).dir)
        elif args.step == "part":
            record = search_part(_part(args.part), parts, store, cfg.pool, chunk)
            print(f"rows {record['rows'][0]}..{record['rows'][1]} done")
        else:
            print(finish(store, cfg.pool, parts))
    except (ConfigError, StoreMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
