"""Raw data in the four real formats -> feature store -> pool -> training, with tiny random encoders."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import tarfile

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bacl import extract as extract_mod
from bacl.config import load_config
from bacl.data import fixtures, media
from bacl.data.dedup import excluded_keys, find_test_duplicates
from bacl.data.pool import candidate_pool, filter_signature, pool_counts
from bacl.data.split import FeatureSplit
from bacl.data.store import FeatureStore, StoreMissing, caption_hash
from bacl.data.store_dataset import hash_split
from bacl.data.vast27m import match_classification
from bacl.encoders.base import fixed_init
from bacl.errors import ConfigError
from bacl.evaluate import first_items
from bacl.extract import DataError, build_pool, extract_features
from bacl.registry import DATASETS
from bacl.trainer import Trainer
from helpers import REPO

OPEN_CLIP = ["dataset.vision_encoder.model=bacl-tiny-vit", "dataset.vision_encoder.pretrained=null",
             "dataset.text_encoder.model=bacl-tiny-vit", "dataset.text_encoder.pretrained=null"]
CLAP = ["dataset.audio_encoder.model=tiny", "dataset.audio_encoder.pretrained=null"]
ROBERTA = ["dataset.text_encoder.name=roberta", "dataset.text_encoder.model=tiny", "dataset.text_encoder.pretrained=null"]
TRAIN = ["model.width=32", "model.heads=2", "model.layers=2", "train.batch_size=8", "train.epochs=2",
         "train.threads=1", "pool.k=3"]
# Random weights put every embedding close together (cosines 0.96-0.999 on the fixtures), so a frozen-cosine
# duplicate test would call everything a duplicate: only identical captions are filtered with them.
NO_EMBEDDING_DEDUP = ["pool.duplicate_threshold=1.0", "dataset.dedup_threshold=1.0"]

# name -> (fixture writer kwargs, overrides, the key of the corrupt sample, its reason kind)
CASES = {
    "laion400m": (dict(n=24, per_shard=8), OPEN_CLIP, "000000001", "image"),
    "webvid10m": (dict(n=12, n_val=6), [*OPEN_CLIP, "dataset.frames=3"], "1002", "video"),
    "wavtext5k": (dict(n=16), [*CLAP, *ROBERTA, "dataset.test_fraction=0.3"], "0003.wav", "audio"),
    "vast27m": (dict(n=20), [*OPEN_CLIP, *CLAP, "dataset.frames=3", "dataset.test_fraction=0.3"], "clip00004", "video"),
}


def overrides(name: str, root, *extra: str) -> list[str]:
    return [f"dataset={name}", f"dataset.root={root}", *CASES[name][1], *TRAIN, *NO_EMBEDDING_DEDUP, *extra]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Each dataset written in its real format and extracted once (shared by the tests below)."""
    out = {}
    for name, (kwargs, _, _, _) in CASES.items():
        root = fixtures.WRITERS[name](tmp_path_factory.mktemp(name), **kwargs)
        cfg = load_config(overrides(name, root))
        store = extract_features(cfg)
        build_pool(cfg)
        out[name] = (root, cfg, store)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_extract_then_train_end_to_end(extracted, tmp_path, name):
    root, cfg, store = extracted[name]
    _, _, bad_key, kind = CASES[name]
    shards = store.manifest["shards"]
    assert store.missing_shards() == [] and len(shards) >= 1
    skipped = [s for shard in shards for s in json.loads((store.path / "shards" / shard / "items.json").read_text())["skipped"]]
    assert [s["key"] for s in skipped] == [bad_key] and skipped[0]["reason"].startswith(kind)
    counts = store.counts()
    assert counts["skipped"] == {kind: 1} and counts["train_items"] > 0 and counts["test_items"] > 1

    trainer = Trainer(load_config(overrides(name, root, f"output_dir={tmp_path}")))
    result = trainer.run()
    assert result["status"] == "ok", result.get("error")
    assert result["data"]["skipped_total"] == 1 and result["data"]["train_items"] == counts["train_items"]
    assert result["data"]["test_items"] == counts["test_items"] and result["data"]["test_removed"] == 0
    assert result["data"]["warnings"] == [] and result["data"]["pool_anchors"] == counts["train_items"]
    assert 0 <= result["metrics"]["i2t_R@1"] <= 100 and "t2i_nDCG@10" in result["metrics"]
    if name == "vast27m":
        assert {"cls_accuracy", "cls_f1", "cls_recall"} <= set(result["metrics"])
    # the model's input width is the store's: all streams side by side
    train = trainer.train_split
    assert train.vision.shape[0] == counts["train_items"] and train.text_item.max() < train.n_items


def test_laion_features_equal_open_clip_run_directly(extracted):
    """Stored pooled features are open_clip's own encode_image / encode_text of the raw sample (fp16 precision)."""
    root, _, store = extracted["laion400m"]
    with tarfile.open(root / "00000.tar") as tar:
        jpg = tar.extractfile("000000000.jpg").read()
        caption = tar.extractfile("000000000.txt").read().decode()
    with fixed_init():  # the random weights every process draws for pretrained=null
        model, _, preprocess = open_clip.create_model_and_transforms("bacl-tiny-vit", pretrained=None)
    with torch.no_grad():
        ref_image = model.eval().encode_image(preprocess(Image.open(io.BytesIO(jpg)).convert("RGB"))[None])[0]
        ref_text = model.encode_text(open_clip.get_tokenizer("bacl-tiny-vit")([caption]))[0]
    shard = store.path / "shards" / "00000.tar"
    row = json.loads((shard / "items.json").read_text())["keys"].index("000000000")
    np.testing.assert_allclose(np.load(shard / "image.pooled.npy")[row], ref_image.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.load(shard / "image.tokens.npy")[row, 0], ref_image.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.load(shard / "text.pooled.npy")[row], ref_text.numpy(), rtol=2e-3, atol=2e-3)


def test_interrupted_extraction_resumes_without_redoing_shards(tmp_path, monkeypatch):
    root = fixtures.laion400m(tmp_path / "laion", n=24, per_shard=8)
    cfg = load_config(overrides("laion400m", root))
    real, calls = extract_mod.extract_shard, []

    def dies_on_second(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)
    monkeypatch.setattr(extract_mod, "extract_shard", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        extract_features(cfg)
    store = FeatureStore(DATASETS.entry("laion400m").load().store_path(cfg.dataset))
    assert store.missing_shards() == ["00001.tar", "00002.tar"]
    first = (store.path / "shards" / "00000.tar" / "image.tokens.npy").stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(extract_mod, "extract_shard", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    extract_features(cfg)
    assert calls == ["00001.tar", "00002.tar"]
    assert (store.path / "shards" / "00000.tar" / "image.tokens.npy").stat().st_mtime_ns == first

    other = load_config(overrides("laion400m", root, f"dataset.store={tmp_path / 'fresh'}"))
    fresh = extract_features(other)
    for split in ("train", "test"):
        a, b = store.split(split), fresh.split(split)
        assert torch.equal(a.vision, b.vision) and torch.equal(a.text, b.text) and torch.equal(a.text_item, b.text_item)


def test_strict_mode_stops_on_the_corrupt_sample(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=16, per_shard=8)
    cfg = load_config(overrides("laion400m", root, "dataset.strict=true"))
    with pytest.raises(DataError, match="dataset.strict=true.*000000001"):
        extract_features(cfg)


def test_training_without_a_store_names_the_extract_command(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=16, per_shard=8)
    with pytest.raises(ConfigError, match="experiments/extract.py dataset=laion400m"):
        Trainer(load_config(overrides("laion400m", root, f"output_dir={tmp_path / 'runs'}"))).build()


@pytest.mark.parametrize("bad, message", [
    (["dataset.root=/nonexistent/laion"], "dataset.root='/nonexistent/laion': no such directory"),
    (["dataset.shards={00000..00009}.tar"], "dataset.shards=.*not found"),
    (["dataset.vision_encoder.name=nope"], "dataset.vision_encoder.name='nope'"),
])
def test_bad_dataset_input_is_named(tmp_path, bad, message):
    root = fixtures.laion400m(tmp_path / "laion", n=16, per_shard=8)
    with pytest.raises(ConfigError, match=message):
        extract_features(load_config(overrides("laion400m", root, *bad)))


def test_missing_csv_column_is_named(tmp_path):
    root = fixtures.webvid10m(tmp_path / "webvid", n=4, n_val=2)
    (root / "results_10M_train.csv").write_text("videoid,name\n1,a\n")
    with pytest.raises(ConfigError, match="lacks column.*page_dir"):
        extract_features(load_config(overrides("webvid10m", root)))


def test_store_refuses_features_of_another_config(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=16, per_shard=8)
    cfg = load_config(overrides("laion400m", root, f"dataset.store={tmp_path / 'store'}"))
    extract_features(cfg)
    other = load_config(overrides("laion400m", root, f"dataset.store={tmp_path / 'store'}",
                                  "dataset.vision_encoder.patch_grid=2"))
    with pytest.raises(ValueError, match="another config"):
        extract_features(other)


def test_stored_pool_is_reused_only_when_it_matches(extracted):
    _, cfg, store = extracted["laion400m"]
    pool = cfg.pool
    sig = filter_signature(pool.duplicate_threshold, pool.drop_same_caption)
    stored, meta = store.load_pool("train", "vision", 3, pool.index, sig)
    assert stored.shape[1] == 3 and meta["duplicate_threshold"] == 1.0 and meta["drop_same_caption"]
    assert store.load_pool("train", "vision", 2, pool.index, sig)[0].equal(stored[:, :2])
    assert store.load_pool("train", "vision", 4, pool.index, sig) is None  # more neighbours than stored
    ivf = load_config(overrides("laion400m", cfg.dataset.root, "pool.index.kind=ivf")).pool.index
    assert store.load_pool("train", "vision", 3, ivf, sig) is None
    assert store.load_pool("train", "vision", 3, pool.index, filter_signature(0.95, True)) is None  # another filter


def test_streams_of_a_trimodal_item_sit_in_disjoint_channel_blocks(extracted):
    _, _, store = extracted["vast27m"]
    split = store.split("train")
    shard = store.path / "shards" / store.manifest["shards"][0]
    dims = [np.load(shard / f"{s}.tokens.npy", mmap_mode="r").shape[1:] for s in ("frames", "audio", "subtitle")]
    assert split.vision.shape[1:] == (sum(n for n, _ in dims), sum(d for _, d in dims))
    (lf, df), (la, da), _ = dims
    frames = np.load(shard / "frames.tokens.npy")
    keep = [s == "train" for s in json.loads((shard / "items.json").read_text())["splits"]]
    assert torch.equal(split.vision[:, :lf, :df], torch.from_numpy(frames[keep]))
    assert (split.vision[:, :lf, df:] == 0).all() and (split.vision[:, lf:lf + la, :df] == 0).all()


def test_match_classification_by_hand():
    # 4 clips; caption c of clip c. Neighbours: 0<->1, 2<->3. Matched pairs score 0.9, 0.8, 0.7, 0.2;
    # mismatched ones 0.1, 0.3, 0.6, 0.5. Fitted on clips 0 and 2: any threshold in (0.6, 0.7) is perfect
    # there; the midpoint 0.65 on clips 1 and 3 gives TP = 1 (0.8), FN = 1 (0.2), TN = 2.
    scores = torch.full((4, 4), -1.0)
    own = torch.arange(4)
    neighbour = torch.tensor([1, 0, 3, 2])
    for i, (p, n) in enumerate([(0.9, 0.1), (0.8, 0.3), (0.7, 0.6), (0.2, 0.5)]):
        scores[i, i], scores[i, neighbour[i]] = p, n
    out = match_classification(lambda i, c: scores[i, c], own, neighbour)
    assert out["cls_threshold"] == pytest.approx(0.65)
    assert out["cls_accuracy"] == pytest.approx(75.0)
    assert out["cls_recall"] == pytest.approx(50.0)
    assert out["cls_f1"] == pytest.approx(100 * 2 * 1.0 * 0.5 / 1.5)


def test_video_frames_are_sampled_uniformly(tmp_path):
    """The fixture's shape moves left to right: sampled frames must show it in increasing positions."""
    fixtures._write_video(tmp_path / "v.mp4", 0, seconds=2.0)
    frames = media.video_frames(tmp_path / "v.mp4", 4)
    xs = [np.nonzero((np.asarray(f.convert("L")) < 150).any(axis=0))[0].mean() for f in frames]
    assert len(frames) == 4 and all(a < b for a, b in zip(xs, xs[1:]))


def test_audio_from_a_video_track_and_resampling(tmp_path):
    fixtures._write_video(tmp_path / "v.mp4", 0, seconds=1.0, audio=True)
    wave, rate = media.read_audio(tmp_path / "v.mp4")
    assert rate == fixtures.RATE and abs(wave.size - rate) < 2048
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.fft.rfftfreq(wave.size, 1 / rate)[spectrum.argmax()] == pytest.approx(fixtures.PITCHES["low"], abs=5)
    down = media.resample(wave, rate, 8000)
    assert down.size == pytest.approx(wave.size / 2, abs=1)


def test_hash_split_is_stable_and_near_the_fraction():
    keys = [f"clip{i}" for i in range(4000)]
    test = [k for k in keys if hash_split(k, 0.1) == "test"]
    assert 0.08 < len(test) / len(keys) < 0.12 and test == [k for k in keys if hash_split(k, 0.1) == "test"]


def test_extract_cli_reports_and_exit_codes(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=16, per_shard=8)
    args = [sys.executable, str(REPO / "experiments" / "extract.py"), "dataset=laion400m", f"dataset.root={root}",
            *OPEN_CLIP, "pool.k=3"]
    ok = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "2 shard(s) extracted now (16 samples" in ok.stdout and "'skipped_total': 1" in ok.stdout
    # random weights at the default thresholds: every frozen cosine is above 0.95, so everything is a "duplicate"
    assert "test split: 8 of 8 items excluded as duplicates of training items (0 same caption, 8 cosine > 0.95)" in ok.stdout
    assert "pool: 21 of 21 nearest candidates were duplicates" in ok.stdout and "21 slots filled" in ok.stdout
    assert "warning:" not in ok.stdout
    again = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0 and "0 shard(s) extracted now" in again.stdout
    bad = subprocess.run([*args, "extract.workers=-1"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "extract.workers" in bad.stderr and "Traceback" not in bad.stderr
    strict = subprocess.run([*args, "dataset.strict=true", f"dataset.store={tmp_path / 's'}"],
                            capture_output=True, text=True, cwd=REPO)
    assert strict.returncode == 1 and "000000001" in strict.stderr and "Traceback" not in strict.stderr


def test_a_truncated_jpeg_is_a_corrupt_sample():
    jpeg = fixtures._jpeg(Image.new("RGB", (32, 32), (10, 200, 10)))
    assert media.decode_image(jpeg).size == (32, 32)
    with pytest.raises(media.CorruptSample, match="^image"):
        media.decode_image(jpeg[:100])


def test_main_grid_covers_four_datasets_and_refuses_unextracted_data(tmp_path):
    from bacl.sweep import expand, unextracted
    runs = expand("main", [f"data_root={tmp_path}"])
    assert {r.cfg.dataset.name for r in runs} == {"laion400m", "webvid10m", "wavtext5k", "vast27m"}
    assert len(runs) == 4 * 7 * 3 and all(r.cfg.dataset.root == f"{tmp_path}/{r.cfg.dataset.name}" for r in runs)
    assert len({r.run_id for r in expand("main", ["data_root=/elsewhere"])} & {r.run_id for r in runs}) == len(runs)
    messages = unextracted(runs)
    assert len(messages) == 4 and all("no feature store" in m and "experiments/extract.py" in m for m in messages)
    sweep = subprocess.run([sys.executable, str(REPO / "experiments" / "sweep.py"), "ablation=main", "cluster=slurm-gpu",
                            f"data_root={tmp_path}", f"output_dir={tmp_path / 'runs'}"], capture_output=True, text=True, cwd=REPO)
    assert sweep.returncode == 2 and "extract the features" in sweep.stderr and not (tmp_path / "runs").exists()


# ---- duplicates: planted in a LAION fixture, dropped from the pool, excluded from the test split -------------
EXACT = 0.99999  # random weights: distinct fixture images reach cosine 0.99994, byte-identical ones 1.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The LAION fixture with LAION_PLANTED duplicates, extracted once with tiny random encoders."""
    root = fixtures.laion400m(tmp_path_factory.mktemp("planted"), n=24, per_shard=8, plant_duplicates=True)
    cfg = load_config(overrides("laion400m", root, f"pool.duplicate_threshold={EXACT}", f"dataset.dedup_threshold={EXACT}"))
    store = extract_features(cfg)
    build_pool(cfg)
    return root, cfg, store


def _row(store, split: str, item: int) -> int:
    return store.keys(split).index(fixtures.laion_key(item, 8))


@pytest.mark.parametrize("modality, pair", [("vision", "train_same_image"), ("text", "train_same_caption")])
def test_planted_duplicates_are_dropped_from_the_pool(planted, modality, pair):
    root, cfg, store = planted
    if modality != "vision":
        cfg = load_config(overrides("laion400m", root, f"pool.duplicate_threshold={EXACT}",
                                    f"dataset.dedup_threshold={EXACT}", f"pool.modality={modality}"))
        build_pool(cfg)
    k = cfg.pool.k
    train = store.split("train")
    x = F.normalize(train.pooled(modality).double(), dim=1)
    sims = x @ x.T
    hashes, text_item = store.caption_hashes("train")
    same = torch.zeros(train.n_items, train.n_items, dtype=torch.bool)  # one caption per LAION item
    same[torch.from_numpy(text_item)[:, None], torch.from_numpy(text_item)[None, :]] = torch.from_numpy(
        hashes[:, None] == hashes[None, :])
    duplicate = ((sims > EXACT) | same).fill_diagonal_(False)
    a, b = (_row(store, "train", i) for i in fixtures.LAION_PLANTED[pair])
    assert duplicate[a, b] and duplicate[b, a]

    # the failure: without the filter, the planted copy is its source's nearest candidate
    raw = candidate_pool(train.pooled(modality), k)
    assert raw[a, 0] == b and raw[b, 0] == a

    pool, meta = store.load_pool("train", modality, k, cfg.pool.index, filter_signature(EXACT, True))
    assert not torch.gather(duplicate, 1, pool).any() and b not in pool[a] and a not in pool[b]
    order = sims.fill_diagonal_(-float("inf")).argsort(dim=1, descending=True)[:, :-1]
    expected = torch.stack([row[~duplicate[i, row]][:k] for i, row in enumerate(order)])
    # a brute-force reference, up to the order of candidates whose cosines differ by less than float32 resolves
    assert torch.allclose(torch.gather(sims, 1, pool), torch.gather(sims, 1, expected), atol=1e-5)
    counts = pool_counts(meta, k, train.n_items)
    raw_dup = torch.gather(duplicate, 1, raw)
    assert counts["pool_dropped"] == int(raw_dup.sum()) >= 2 and counts["pool_filled"] == 0
    assert counts["pool_same_caption"] == int(torch.gather(same, 1, raw).sum())
    assert counts["pool_near_duplicate"] == int(torch.gather((sims > EXACT).fill_diagonal_(False), 1, raw).sum())
    if modality == "text":
        assert counts["pool_same_caption"] >= 2


def test_planted_duplicates_leave_the_test_split(planted, tmp_path):
    root, cfg, store = planted
    record = store.load_dedup({"dedup_threshold": EXACT, "dedup_same_caption": True})
    planted_keys = {kind: fixtures.laion_key(copy, 8) for kind, (_, copy) in fixtures.LAION_PLANTED.items()}
    # brute force: test items above the threshold with some training item, in float64 torch
    train, test = store.item_pooled("train"), store.item_pooled("test")
    best = (F.normalize(torch.from_numpy(test).double(), dim=1) @ F.normalize(torch.from_numpy(train).double(), dim=1).T).max(1)
    near = {store.keys("test")[i] for i in torch.nonzero(best.values > EXACT).flatten().tolist()}
    assert near == {planted_keys["test_same_image"]}
    assert {e["key"] for e in record["excluded"]} == {
        planted_keys["test_same_image"], planted_keys["test_same_caption"], planted_keys["test_same_caption_up_to_case"]}
    assert record["counts"] == {"test_items_extracted": 8, "test_removed": 3, "test_removed_same_caption": 2,
                                "test_removed_near_duplicate": 1}
    source = {e["key"]: e["train_key"] for e in record["excluded"]}
    assert source[planted_keys["test_same_image"]] == fixtures.laion_key(fixtures.LAION_PLANTED["test_same_image"][0], 8)

    dataset = DATASETS.entry("laion400m").load()(cfg.dataset)
    assert dataset.test.n_items == 5 and not set(planted_keys.values()) & set(store.keys("test", excluded_keys(record)))
    result = Trainer(load_config(overrides("laion400m", root, f"pool.duplicate_threshold={EXACT}",
                                           f"dataset.dedup_threshold={EXACT}", "train.epochs=1",
                                           f"output_dir={tmp_path}"))).run()
    assert result["status"] == "ok", result.get("error")
    data = result["data"]
    assert data["test_items"] == 5 and data["test_items_extracted"] == 8 and data["test_removed"] == 3
    assert data["test_removed_same_caption"] == 2 and data["test_removed_near_duplicate"] == 1
    assert data["dedup_threshold"] == EXACT and data["pool_duplicate_threshold"] == EXACT
    assert data["pool_dropped"] >= 2 and data["pool_filled"] == 0 and data["warnings"] == []


def test_all_test_items_duplicates_is_a_named_error(planted, tmp_path):
    """Random weights at the default threshold 0.95: every test item is a 'near-duplicate'."""
    root, _, store = planted
    record = find_test_duplicates(store, 0.95, True)
    assert record["counts"]["test_removed"] == 8
    store.save_dedup(record)
    cfg = load_config(overrides("laion400m", root, "dataset.dedup_threshold=0.95", f"output_dir={tmp_path}"))
    with pytest.raises(ConfigError, match=r"dataset\.dedup_threshold=0\.95.*all 8 test items.*dataset\.dedup_threshold=1\.0"):
        Trainer(cfg).build()
    other = load_config(overrides("laion400m", root, "dataset.dedup_threshold=0.9"))
    with pytest.raises(ConfigError, match=r"no test-split deduplication with dataset\.dedup_threshold=0\.9 .*extract\.py"):
        Trainer(other).build()


def test_pretraining_overlap_is_warned_in_result_json(planted, tmp_path, caplog):
    root, cfg, store = planted
    laion = DATASETS.entry("laion400m").load()
    assert laion.pretraining_warnings(cfg.dataset) == []  # random weights (pretrained null)
    # the default encoders (open_clip ViT-B-16 / laion400m_e32) over the same store: no weights are loaded to train
    default = load_config(["dataset=laion400m", f"dataset.root={root}", f"dataset.store={store.path}", *TRAIN,
                           f"pool.duplicate_threshold={EXACT}", f"dataset.dedup_threshold={EXACT}", "train.epochs=1",
                           f"output_dir={tmp_path}"])
    warnings = laion.pretraining_warnings(default.dataset)
    assert len(warnings) == 1 and "dataset.vision_encoder and dataset.text_encoder" in warnings[0]
    assert "pretrained=laion400m_e32" in warnings[0] and "laion400m" in warnings[0]
    with caplog.at_level(logging.WARNING):
        result = Trainer(default).run()
    assert result["status"] == "ok" and result["data"]["warnings"] == warnings
    assert any("pretraining overlap" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("dataset, encoder, tag, warns", [
    ("laion400m", "open_clip", "laion400m_e31", True),
    ("laion400m", "open_clip", "laion2b_s34b_b88k", True),
    ("laion400m", "open_clip", "frozen_laion5b_s13b_b90k", True),
    ("laion400m", "open_clip", "openai", False),
    ("laion400m", "open_clip", "datacomp_xl_s13b_b90k", False),
    ("laion400m", "open_clip", None, False),
    ("webvid10m", "open_clip", "laion400m_e32", False),
    ("laion400m", "roberta", "laion400m_e32", False),
])
def test_pretraining_table(dataset, encoder, tag, warns):
    from types import SimpleNamespace

    from bacl.encoders.pretraining import overlap_warnings
    enc = SimpleNamespace(name=encoder, model="ViT-B-16", pretrained=tag)
    assert bool(overlap_warnings(dataset, {"dataset.vision_encoder": enc})) == warns


def test_caption_hashes_are_added_to_shards_extracted_without_them(tmp_path):
    root = fixtures.laion400m(tmp_path / "laion", n=16, per_shard=8)
    cfg = load_config(overrides("laion400m", root))
    store = extract_features(cfg)
    path = store.path / "shards" / "00000.tar" / "text_hash.npy"
    before = np.load(path)
    path.unlink()  # a shard written before caption hashes were stored
    with pytest.raises(StoreMissing, match="no caption hashes"):
        store.caption_hashes("train")
    build_pool(cfg)
    assert np.array_equal(np.load(path), before)
    assert before[0] == caption_hash(fixtures._caption(0)) == caption_hash(f"  {fixtures._caption(0).upper()} ")


@pytest.mark.parametrize("name", ["laion400m", "vast27m"])
def test_a_streamed_run_trains_from_the_extracted_store_and_its_stored_pool(extracted, tmp_path, name):
    """train.stream.enabled reads the store shard by shard and the pool memory-mapped: the whole split is never loaded."""
    root, _, store = extracted[name]
    trainer = Trainer(load_config(overrides(name, root, f"output_dir={tmp_path}", "train.stream.enabled=true")))
    result = trainer.run()
    assert result["status"] == "ok", result.get("error")
    assert "train" not in {k for k, v in vars(trainer.dataset).items() if isinstance(v, FeatureSplit)}
    assert result["data"]["train_items"] == store.counts()["train_items"] == trainer.train_split.n_items
    assert type(trainer.method.pool).__name__ == "PoolTable"
    missing = load_config(overrides(name, root, f"output_dir={tmp_path}", "train.stream.enabled=true", "pool.k=50"))
    with pytest.raises(ConfigError, match="needs the vision pool stored"):
        Trainer(missing).build()


@pytest.mark.parametrize("name", ["laion400m", "vast27m"])
def test_a_capped_test_split_reads_only_its_first_items(extracted, tmp_path, name):
    """eval.max_items reads only the first test items from the store: the same split evaluate would cut, and
    VAST-27M's match classification runs on those items (it searched the whole split before)."""
    root, _, store = extracted[name]
    whole = store.split("test")
    k = max(2, whole.n_items - 1)
    capped, cut = store.split("test", max_items=k), first_items(whole, k)
    for field in ("vision", "text", "text_item", "vision_pooled", "text_pooled"):
        assert torch.equal(getattr(capped, field), getattr(cut, field)), field
    trainer = Trainer(load_config(overrides(name, root, f"output_dir={tmp_path}", f"eval.max_items={k}")))
    result = trainer.run()
    assert result["status"] == "ok", result.get("error")
    assert result["metrics"]["eval_items"] == k == trainer.dataset.test.n_items < whole.n_items
    if name == "vast27m":  # match classification needs 4 clips or more (the fixture's test split has 4)
        assert ({"cls_accuracy", "cls_f1"} <= set(result["metrics"])) == (k >= 4), (k, sorted(result["metrics"]))
