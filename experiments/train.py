"""Train one run: `python experiments/train.py method=bacl dataset=synthetic output_dir=results`.

Any config key can be overridden as key=value (e.g. pool.k=10 method.schedule.gamma=3).
Exit codes: 0 ok, or skipped because another process is running this run (its run.lock is
held); 1 the run failed (see its result.json); 2 bad input; 130 interrupted (Ctrl-C or
SIGTERM: result.json says `interrupted`, and the same command resumes from last.pt).
"""
from __future__ import annotations

import json
import sys

from bacl.config import load_config
from bacl.errors import ConfigError
from bacl.results import describe_holder
from bacl.trainer import Trainer


def main(argv: list[str]) -> int:
    try:
        cfg = load_config(argv)
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
    sys.exit(main(sys.argv[1:]))
