"""Train one run: `bacl-train method=bacl dataset=synthetic output_dir=results`
(or `python experiments/train.py ...`).

Any config key can be overridden as key=value (e.g. pool.k=10 method.schedule.gamma=3); one run
takes one value per key (several: `bacl-sweep ablation=<name> pool.k=[10,20]`).
  --cfg    print the resolved config (YAML) and exit
  --help   the groups and their choices; `--help method=bacl` or `--help pool`: keys with defaults
Exit codes: 0 ok, or skipped because another process is running this run (its run.lock is
held); 1 the run failed (see its result.json); 2 bad input; 130 interrupted (Ctrl-C or
SIGTERM: result.json says `interrupted`, and the same command resumes from last.pt).
"""
from __future__ import annotations

import json
import sys

from omegaconf import OmegaConf

from bacl.cli.args import parse, single_values
from bacl.cli.help import render
from bacl.config import load_config
from bacl.errors import ConfigError
from bacl.results import describe_holder
from bacl.trainer import Trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd = parse(argv, flags=("--cfg",))
        if cmd.help is not None:
            print(render(__doc__, cmd.help, groups=("method", "dataset")))
            return 0
        single_values(cmd.overrides)
        cfg = load_config(cmd.overrides)
        if "--cfg" in cmd.flags:
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        trainer = Trainer(cfg)
        result = trainer.run()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # also SIGTERM (bacl.trainer.Terminated)
        print(f"interrupted ({type(err).__name__}); run the same command again to resume", file=sys.stderr)
        return 130
    if result["status"] == "running":  # the trainer said where: not started a second time
        print(json.dumps({"run_dir": str(trainer.run_dir), "status": "running",
                          "holder": describe_holder(result.get("holder"))}))
        return 0
    metrics = result.get("metrics") or {}
    summary = {k: round(v, 4) for k, v in metrics.items()
               if k.startswith(("i2t_R@", "t2i_R@")) or k in ("ambiguous_acc", "ael")}
    print(json.dumps({"run_dir": str(trainer.run_dir), "status": result["status"],
                      "wall_time_s": result.get("wall_time_s"), **summary}))
    if result["status"] != "ok":
        print(f"error: {result.get('error')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
