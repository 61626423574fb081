"""Bad shards and malformed annotation files: counted and skipped, or a clear error naming the file."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest
from test_extract import OPEN_CLIP, overrides

from bacl import extract as extract_mod
from bacl.config import load_config
from bacl.data import fixtures
from bacl.data.store import FeatureStore
from bacl.extract import build_pool, extract_features
from bacl.registry import DATASETS
from bacl.trainer import Trainer
from helpers import REPO


def _empty_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    return buf.getvalue()


BAD_SHARDS = {"zero_bytes": lambda: b"", "tar_without_members": _empty_tar, "random_bytes": lambda: os.urandom(6000)}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "experiments" / "extract.py"), *args],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("bad", list(BAD_SHARDS))
def test_an_unusable_shard_is_skipped_counted_and_not_redone(tmp_path, monkeypatch, bad):
    root = fixtures.laion400m(tmp_path / "laion", n=24, per_shard=8)
    (root / "00001.tar").write_bytes(BAD_SHARDS[bad]())
    cfg = load_config(overrides("laion400m", root, f"output_dir={tmp_path / 'runs'}", "train.epochs=1"))
    store = extract_features(cfg)
    build_pool(cfg)
    assert store.missing_shards() == []
    counts = store.counts()
    assert counts["shards_skipped"] == 1 and counts["shards_skipped_names"] == ["00001.tar"]
    assert counts["train_items"] == 7 and counts["test_items"] == 8  # shard 0 less its corrupt JPEG; shard 2
    items = json.loads((store.path / "shards" / "00001.tar" / "items.json").read_text())
    assert items["keys"] == [] and str(root / "00001.tar") in items["shard_skipped"]
    if bad != "tar_without_members":  # the unreadable tar is one event; an empty tar loses no sample
        assert [s["reason"].split(":")[0] for s in items["skipped"]] == ["tar"]

    calls = []
    monkeypatch.setattr(extract_mod, "extract_shard", lambda *a, **k: calls.append(a[2]))
    extract_features(cfg)
    assert calls == []  # a rerun does not redo finished (or skipped) shards

    if bad == "random_bytes":  # training uses the store
        result = Trainer(cfg).run()
        assert result["status"] == "ok", result.get("error")
        assert result["data"]["shards_skipped"] == 1 and result["data"]["train_items"] == 7


def test_an_unusable_shard_through_the_cli(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=24, per_shard=8, corrupt=False)  # strict stops at the shard
    (root / "00001.tar").write_bytes(os.urandom(6000))
    args = ["dataset=laion400m", f"dataset.root={root}", *OPEN_CLIP, "pool.k=3",
            "pool.duplicate_threshold=1.0", "dataset.dedup_threshold=1.0"]
    strict = _cli(*args, "dataset.strict=true")
    assert strict.returncode == 2, strict.stderr
    assert f"error: dataset.strict=true and shard {root / '00001.tar'} has no usable sample" in strict.stderr
    assert "Traceback" not in strict.stderr
    ok = _cli(*args)
    assert ok.returncode == 0, ok.stderr
    assert "'shards_skipped': 1" in ok.stdout and "were skipped: 00001.tar" in ok.stdout
    again = _cli(*args)
    assert again.returncode == 0 and "0 shard(s) extracted now" in again.stdout


def test_a_truncated_tar_counts_decode_failures_by_key_and_the_tail_once(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=24, per_shard=8)
    fixtures._truncate(root / "00000.tar")  # keeps samples 0-3 (1 is a corrupt JPEG); 4-7 are lost
    cfg = load_config(overrides("laion400m", root))
    store = extract_features(cfg)
    skipped = json.loads((store.path / "shards" / "00000.tar" / "items.json").read_text())["skipped"]
    reasons = {s["key"]: s["reason"] for s in skipped}
    assert len(skipped) == 2 and set(reasons) == {"000000001", "00000.tar"}
    assert reasons["000000001"].startswith("image:")
    tail = reasons["00000.tar"]
    assert tail.startswith(f"truncated: {root / '00000.tar'}:") and "after 4 sample(s)" in tail and "unknown" in tail
    assert store.counts()["skipped"] == {"image": 1, "truncated": 1}
    assert len(store.keys("train")) == 3 + 8


def _write_table(root, name: str, data: bytes) -> None:
    (root / name).write_bytes(data)


BAD_FILES = {
    # id: (dataset, fixture kwargs, file, content, what the message must say)
    "webvid_binary_csv": ("webvid10m", dict(n=4, n_val=2), "results_10M_train.csv", os.urandom(4000),
                          "results_10M_train.csv is not a readable CSV"),
    "webvid_missing_columns": ("webvid10m", dict(n=4, n_val=2), "results_10M_val.csv", b"videoid,name\n1,a\n",
                               r"results_10M_val.csv lacks column\(s\) \['page_dir'\]"),
    "wavtext_binary_csv": ("wavtext5k", dict(n=4), "WavText5K.csv", os.urandom(4000),
                           "WavText5K.csv is not a readable CSV"),
    "wavtext_missing_columns": ("wavtext5k", dict(n=4), "WavText5K.csv", b"title,tags\na,b\n",
                                r"WavText5K.csv lacks column\(s\) \['fname', 'description'\]"),
    "vast_strings": ("vast27m", dict(n=4), "annotations.json", json.dumps(["clip0", "clip1"]).encode(),
                     "annotations.json: record 0 is a str, expected an object"),
    "vast_mixed": ("vast27m", dict(n=4), "annotations.json",
                   json.dumps([{"clip_id": "a", "vast_cap": ["x"]}] * 3 + [["b"]]).encode(),
                   "annotations.json: record 3 is a list, expected an object"),
    "vast_top_level": ("vast27m", dict(n=4), "annotations.json", json.dumps({"clip0": {}}).encode(),
                       "annotations.json must hold a list of clip records.*top level is an object"),
    "vast_binary": ("vast27m", dict(n=4), "annotations.json", os.urandom(4000), "annotations.json is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_malformed_annotation_file_exits_2_naming_it(tmp_path, case):
    name, kwargs, file, content, message = BAD_FILES[case]
    root = fixtures.WRITERS[name](tmp_path / name, **kwargs)
    _write_table(root, file, content)
    out = _cli(*overrides(name, root))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: dataset.")
    assert re.search(message, out.stderr), out.stderr
    assert str(root / file) in out.stderr


def test_the_store_reads_a_skipped_shard_as_empty(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=24, per_shard=8)
    (root / "00000.tar").write_bytes(b"")
    cfg = load_config(overrides("laion400m", root))
    store = extract_features(cfg)
    assert FeatureStore(store.path).has_caption_hashes("00000.tar")
    build_pool(cfg)  # caption hashes, pool and dedup pass over the empty shard
    dataset = DATASETS.entry("laion400m").load()(cfg.dataset)
    assert dataset.train.n_items == 8 and dataset.data_counts()["shards_skipped"] == 1
