"""The worked example in docs/adding-a-baseline.md is real: one file, one registry line."""
import importlib
import re
import sys
from pathlib import Path

import torch

from bacl.registry import METHODS, Entry
from bacl.trainer import Trainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-baseline.md"


def test_worked_example_trains(tiny_config, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    source, registry_line = blocks[0], blocks[1]
    package = tmp_path / "doc_baselines"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "focal.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    name, target = re.search(r'"(\w+)": Entry\("baselines\.(.+?)"\)', registry_line).groups()
    monkeypatch.setitem(METHODS._entries, name, Entry(f"doc_baselines.{target}"))

    cfg = tiny_config(f"method={name}", "method.gamma=1.0")
    assert Trainer(cfg).run()["status"] == "ok"

    # the pure loss is what the doc says, (1 - p)^gamma * CE, checked by a loop
    focal_info_nce = importlib.import_module("doc_baselines.focal").focal_info_nce
    logits = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 5, 1])
    ours = focal_info_nce(logits, labels, 2.0)
    for i in range(4):
        p = torch.softmax(logits[i], 0)[labels[i]]
        assert torch.isclose(ours[i], -(1 - p) ** 2 * torch.log(p))
    sys.modules.pop("doc_baselines.focal", None)
