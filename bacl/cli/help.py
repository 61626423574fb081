"""`--help`: the groups with their choices (read from the registry and the conf folder, so a new
method, dataset, ablation or cluster profile is listed without editing help text) and, for
`--help <section>` or `--help <group>=<choice>`, that section's keys with their defaults."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from bacl.config import GROUPS, load_config
from bacl.errors import ConfigError
from bacl.registry import DATASETS, METHODS
from bacl.sweep import available, load_group_file

FILE_GROUPS = ("ablation", "cluster")  # YAML files in bacl/conf/<group>/


def choices(group: str) -> list[str]:
    return {"method": METHODS.names, "dataset": DATASETS.names}.get(group, lambda: available(group))()


def overview(doc: str, groups: tuple[str, ...]) -> str:
    """The command's docstring, its groups with every choice, and the sections of the run config."""
    cfg = load_config([])
    sections = [k for k in cfg if isinstance(cfg[k], DictConfig)]
    lines = [doc.strip(), "", "Groups (group=choice):"]
    lines += [f"  {group}=  {', '.join(choices(group))}" for group in groups]
    lines += ["", f"Run-config sections (key=value overrides): {', '.join(sections)}",
              f"Top-level keys: {', '.join(k for k in cfg if k not in sections)}",
              "--help <section> or --help <group>=<choice> lists the keys with their defaults, e.g.",
              "  --help method=bacl    --help pool    --help train" + ("    --help cluster=slurm" if "cluster" in groups else ""),
              "--cfg prints the resolved config (YAML) and exits."]
    return "\n".join(lines)


def section(topics: list[str]) -> str:
    """The keys and defaults of each topic: a section (`pool`, `method.schedule`) of the config built
    with the topics' group choices, or an ablation or cluster file."""
    picks = [t for t in topics if t.partition("=")[0] in GROUPS]
    cfg = load_config(picks)
    out = []
    for topic in topics:
        group, _, choice = topic.partition("=")
        if group in FILE_GROUPS and choice:
            out.append(f"# {group}={choice} (bacl/conf/{group}/{choice}.yaml, with defaults)\n"
                       + OmegaConf.to_yaml(load_group_file(group, choice)))
        elif group in GROUPS and choice:
            out.append(f"# {group}={choice}: keys of {group}.* with their defaults\n" + OmegaConf.to_yaml({group: cfg[group]}))
        elif "=" not in topic and OmegaConf.select(cfg, topic) is not None:
            node = OmegaConf.select(cfg, topic)
            out.append(f"# {topic}\n" + OmegaConf.to_yaml({topic: node} if isinstance(node, DictConfig) else {topic: node}))
        else:
            raise ConfigError(f"--help {topic}: not a section or group choice; sections are {', '.join(cfg)}, "
                              f"groups {', '.join((*GROUPS, *FILE_GROUPS))} (e.g. --help method=bacl)")
    return "\n".join(out)


def render(doc: str, topics: list[str], groups: tuple[str, ...]) -> str:
    return section(topics) if topics else overview(doc, groups)
