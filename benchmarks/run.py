"""The performance suite: BACL's cost against CLIP, its parts, its scaling, data loading and pools.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--out PATH]

Every figure is a ratio or a fitted exponent measured within this one run, with the absolute
numbers beside it and the device named. Writes benchmarks/results/<host>-<date>[-quick].json
and the Markdown summary next to it (.md), and prints the summary.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bacl.data.pool import IndexConfig  # noqa: E402
from bacl.data.store import FeatureStore, ShardArrays  # noqa: E402
from bacl.encoders import EncoderConfig, load_encoder  # noqa: E402
from bacl.results import write_json, write_text  # noqa: E402
from benchmarks import pool_build  # noqa: E402
from benchmarks.common import RESULTS  # noqa: E402
from benchmarks.common import device as device_info
from benchmarks.train_step import WATERFALL, Shape, benches, fitted_exponent, interleaved, peak_step_bytes, saved_activation_bytes  # noqa: E402

# Targets of the performance issue (the paper: about +8 % time end to end).
TARGET_END_TO_END, TARGET_CACHED, TARGET_LOADING = 1.08, 1.5, 3.0


def waterfall(shape: Shape, dev: str, reps: int) -> dict:
    """Step time of CLIP and of each BACL part added in turn, at one model, batch and data."""
    trainers = benches([m for m, _ in WATERFALL], shape, dev, reps + 2)
    times = interleaved({m: b.step for m, b in trainers.items()}, reps=reps, warmup=1, device=dev)
    rows, previous = [], 0.0
    for method, adds in WATERFALL:
        bank = trainers[method].bank_refresh_per_step()
        total = times[method] + bank
        rows.append({"method": method, "adds": adds, "step_s": times[method], "bank_refresh_s": bank,
                     "total_s": total, "increment_s": total - previous})
        previous = total
    for r in rows:
        bench = trainers[r["method"]]
        r.update(vs_clip=r["total_s"] / rows[0]["total_s"], activation_bytes=saved_activation_bytes(bench),
                 peak_bytes=peak_step_bytes(bench, dev))
        r["activations_vs_clip"] = r["activation_bytes"] / rows[0]["activation_bytes"]
    bank = trainers["bacl"].trainer.method.bank.shard
    return {"shape": asdict(shape), "items": trainers["clip"].trainer.train_split.n_items, "rows": rows,
            "bank_bytes_per_caption": bank.shape[1] * bank.element_size()}


def end_to_end(shape: Shape, dev: str, reps: int, encoder: str) -> dict:
    """The step with the frozen encoder's forward on raw images and captions, as the paper counts it."""
    cfg = EncoderConfig(model=encoder, pretrained=None)
    image, text = load_encoder(cfg, "image", dev), load_encoder(cfg, "text", dev)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    pixels = torch.stack([image.preprocess(photo)] * shape.batch)
    ids = torch.stack([text.preprocess(f"a photo of a thing number {i}") for i in range(shape.batch)])
    shape = replace(shape, vision_tokens=image.tokens, text_tokens=text.tokens, dim=image.dim)
    trainers = benches(("clip", "bacl"), shape, dev, reps + 2)

    def encode() -> None:
        image.encode(pixels), text.encode(ids)
    # The encoder's forward does not depend on the method: it is timed once, beside the steps on
    # features of its output shape, and added to both.
    times = interleaved({"encoder": encode, **{m: b.step for m, b in trainers.items()}}, reps=reps, warmup=1,
                        device=dev)
    clip = times["encoder"] + times["clip"]
    bacl = times["encoder"] + times["bacl"] + trainers["bacl"].bank_refresh_per_step()
    return {"encoder": f"open_clip {encoder} (random weights: the pretrained model's cost)",
            "shape": asdict(shape), "encoder_s": times["encoder"], "clip_s": clip, "bacl_s": bacl,
            "vs_clip": bacl / clip, "encoder_fraction_of_clip": times["encoder"] / clip}


def scaling(shape: Shape, dev: str, reps: int, batches: list[int], ks: list[int], tokens: list[int]) -> dict:
    """Fitted exponents of step time in B, k and L; BNS selection alone in B and k."""
    def step_times(shapes: list[Shape], methods: tuple[str, ...]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {m: [] for m in methods}
        for s in shapes:
            t = interleaved({m: b.step for m, b in benches(methods, s, dev, reps + 2).items()}, reps=reps, warmup=1,
                            device=dev)
            for m in methods:
                out[m].append(t[m])
        return out

    def selection_times(shapes: list[Shape]) -> list[float]:
        out = []
        for s in shapes:
            bench = benches(("bacl",), s, dev, 2)["bacl"]
            out.append(interleaved({"bns": bench.selection()}, reps=reps, warmup=1, device=dev)["bns"])
        return out

    result: dict = {}
    in_b = step_times([replace(shape, batch=b) for b in batches], ("clip", "bacl"))
    result["batch"] = {"values": batches, "seconds": in_b, "exponent": {m: fitted_exponent(batches, t)
                                                                        for m, t in in_b.items()}}
    in_l = step_times([replace(shape, text_tokens=L, vision_tokens=L) for L in tokens], ("clip", "bacl"))
    result["tokens"] = {"values": tokens, "seconds": in_l, "exponent": {m: fitted_exponent(tokens, t)
                                                                        for m, t in in_l.items()}}
    in_k = step_times([replace(shape, k=k) for k in ks], ("bacl",))
    result["pool_k"] = {"values": ks, "seconds": in_k, "exponent": {"bacl": fitted_exponent(ks, in_k["bacl"])}}
    sel_b = selection_times([replace(shape, batch=b) for b in batches])
    sel_k = selection_times([replace(shape, k=k) for k in ks])
    result["bns_selection"] = {"batch": {"values": batches, "seconds": sel_b, "exponent": fitted_exponent(batches, sel_b)},
                               "pool_k": {"values": ks, "seconds": sel_k, "exponent": fitted_exponent(ks, sel_k)}}
    return result


def loading(shape: Shape, dev: str, reps: int, consumed_per_s: float, shards: int = 4) -> dict:
    """Samples/s the data path delivers, against what a BACL step consumes (the loop must not wait)."""
    bench = benches(("bacl",), shape, dev, reps + 2)["bacl"]
    split = bench.trainer.train_split
    n = split.n_items
    batch_s = interleaved({"batch": lambda: bench.trainer.method.batch(bench.next_items())}, reps=reps * 4, warmup=2,
                          device=dev)["batch"]
    work = Path(tempfile.mkdtemp(prefix="bacl-load-bench-"))
    try:
        store = FeatureStore(work)
        per = n // shards
        store.init({"benchmark": True}, ["image"], [f"{i:05d}" for i in range(shards)])
        for i in range(shards):
            rows = slice(i * per, (i + 1) * per)
            store.write_shard(f"{i:05d}", ShardArrays(
                keys=[str(j) for j in range(per)], splits=["train"] * per,
                streams={"image": (split.vision[rows].numpy(), split.vision[rows, 0].numpy())},
                text_tokens=split.text[rows].numpy(), text_pooled=split.text[rows, 0].numpy(),
                text_item=np.arange(per), skipped=[]))
        start = time.perf_counter()
        loaded = store.split("train")
        read_s = time.perf_counter() - start
        shard = np.load(work / "shards" / "00000" / "image.tokens.npy", mmap_mode="r")
        order = np.random.default_rng(0).permutation(per)
        start = time.perf_counter()
        for i in range(0, per - shape.batch + 1, shape.batch):
            torch.from_numpy(shard[np.sort(order[i:i + shape.batch])]).float()
        mmap_s = (time.perf_counter() - start) / (per // shape.batch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {"in_memory_batch": shape.batch / batch_s, "store_to_memory": loaded.n_items / read_s,
             "memmap_random_batch_vision_only": shape.batch / mmap_s}
    return {"consumed_per_s": consumed_per_s, "delivered_per_s": rates,
            "vs_consumption": {k: v / consumed_per_s for k, v in rates.items()},
            "store_bytes_per_sample": (split.vision[0].numel() + split.text[0].numel()) * 2}


def pools(quick: bool) -> list[dict]:
    """Exact against IVF and IVF-PQ (the LAION-scale choice, 64 bytes per vector); HNSW: benchmarks/pool_build.py."""
    if quick:
        return pool_build.bench(pool_build.Size(10**4, 1000, {k: IndexConfig(kind=k) for k in ("flat", "ivf", "ivfpq")}))
    return pool_build.bench(pool_build.Size(10**5, 500, {k: IndexConfig(kind=k) for k in ("flat", "ivf", "ivfpq")}))


# ---- the summary ---------------------------------------------------------------------------------
def _ms(s: float) -> str:
    return f"{1e3 * s:,.1f}"


def _verdict(value: float, target: float) -> str:
    return f"met (≤ {target:g})" if value <= target else f"missed by {value / target - 1:.0%} (target ≤ {target:g})"


def summary(r: dict) -> str:
    d, w, e, s, lo = r["device"], r["waterfall"], r["end_to_end"], r["scaling"], r["loading"]
    where = d["gpu"] or f"{d['cpu']}, {d['torch_threads']} threads (CPU)"
    sh = w["shape"]
    lines = [f"# Benchmark summary: {where}", "",
             f"{r['date']}, {'quick' if r['quick'] else 'full'} run, {r['wall_s']:.0f} s; load average "
             f"{d['load_avg_1m']:.1f} at start. Ratios are within this run; absolute times count only on a GPU.", "",
             f"## Training step on cached features (B={sh['batch']}, k={sh['k']}, L_v={sh['vision_tokens']}, "
             f"L_t={sh['text_tokens']}, d={sh['dim']}, width {sh['width']}, {sh['layers']} layers)", "",
             "| method | what it adds | step (ms) | bank refresh (ms/step) | total (ms) | + part (ms) | × clip "
             "| saved activations (MiB) | × clip | peak step memory (MiB) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in w["rows"]:
        peak = "n/a (CPU)" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:,.0f}"
        lines.append(f"| {row['method']} | {row['adds']} | {_ms(row['step_s'])} | {_ms(row['bank_refresh_s'])} "
                     f"| {_ms(row['total_s'])} | {_ms(row['increment_s'])} | {row['vs_clip']:.2f} "
                     f"| {row['activation_bytes'] / 2**20:,.1f} | {row['activations_vs_clip']:.2f} | {peak} |")
    bacl, clip_row = w["rows"][-1], w["rows"][0]
    lines += ["", "Saved activations: the bytes autograd keeps for the backward (parameters excluded), counted "
              "exactly on any device. Peak step memory: CUDA allocator peak above what is held between steps. "
              f"The bank holds {w['bank_bytes_per_caption']:.0f} bytes per caption (fp32) between steps.", "",
              f"## End to end (frozen encoder forward included, B={e['shape']['batch']})", "",
              "| | ms/step |", "|---|---:|",
              f"| frozen encoder forward ({e['encoder']}) | {_ms(e['encoder_s'])} |",
              f"| clip (encoder + step) | {_ms(e['clip_s'])} |",
              f"| bacl (encoder + step + bank refresh) | {_ms(e['bacl_s'])} |", "",
              "## Targets", "", "| target | measured | verdict |", "|---|---:|---|",
              f"| end to end, bacl ÷ clip | {e['vs_clip']:.3f} | {_verdict(e['vs_clip'], TARGET_END_TO_END)} |",
              f"| cached features, bacl ÷ clip | {bacl['vs_clip']:.3f} | {_verdict(bacl['vs_clip'], TARGET_CACHED)} |"]
    slowest = min(lo["vs_consumption"].items(), key=lambda kv: kv[1])
    lines += [f"| data loading ÷ consumption (slowest path: {slowest[0]}) | {slowest[1]:.1f} "
              f"| {'met' if slowest[1] >= TARGET_LOADING else 'missed'} (≥ {TARGET_LOADING:g}) |"]
    extra = (bacl["activation_bytes"] - clip_row["activation_bytes"]) / sh["batch"]
    lines.append(f"| saved activations, bacl − clip | {extra / 2**10:,.0f} KiB per sample "
                 f"({extra * 512 / 2**30:.2f} GiB at the paper's 512 per GPU) | reported (the paper: +1.7 GB) |")
    if bacl["peak_bytes"] is not None:
        lines.append(f"| peak step memory, bacl − clip | {(bacl['peak_bytes'] - clip_row['peak_bytes']) / 2**20:,.0f} MiB "
                     "| reported |")
    lines += ["", "## Scaling (fitted exponent of step time; 1 = linear)", "", "| in | values | clip | bacl |",
              "|---|---|---:|---:|"]
    for key, label in (("batch", "batch B"), ("tokens", "tokens L (L_v = L_t)"), ("pool_k", "pool k")):
        ex = s[key]["exponent"]
        lines.append(f"| {label} | {s[key]['values']} | {ex['clip']:.2f} | {ex['bacl']:.2f} |" if "clip" in ex
                     else f"| {label} | {s[key]['values']} | — | {ex['bacl']:.2f} |")
    bns = s["bns_selection"]
    lines += ["", f"BNS selection alone (candidates, scores, policy, Gumbel, policy backward): exponent "
              f"{bns['batch']['exponent']:.2f} in B over {bns['batch']['values']}, "
              f"{bns['pool_k']['exponent']:.2f} in k over {bns['pool_k']['values']} (linear in B·k: both ≤ 1).", "",
              "## Data loading", "", "| path | samples/s | ÷ consumption |", "|---|---:|---:|"]
    for k, v in lo["delivered_per_s"].items():
        lines.append(f"| {k} | {v:,.0f} | {lo['vs_consumption'][k]:.1f} |")
    lines += [f"| consumed by a bacl step (cached features) | {lo['consumed_per_s']:,.0f} | 1 |", "",
              "## Candidate pool (k = 20, d = 512)", "", pool_build.table(r["pools"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes on 2 CPU cores")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="JSON path (the .md summary goes beside it)")
    args = parser.parse_args()
    dev, quick = args.device, args.quick
    start = time.perf_counter()
    info = device_info()
    gpu = dev == "cuda"
    # The step shape: the paper's 512 per GPU on CUDA; what 2 CPU cores afford otherwise.
    shape = Shape(batch=512 if gpu else (32 if quick else 128))
    reps = 3 if quick else 6
    print("step costs ...", file=sys.stderr, flush=True)
    w = waterfall(shape, dev, reps)
    print("end to end ...", file=sys.stderr, flush=True)
    e = end_to_end(replace(shape, batch=256 if gpu else (8 if quick else 16)), dev, reps=2 if quick else 4,
                   encoder="ViT-B-16")
    print("scaling ...", file=sys.stderr, flush=True)
    base = replace(shape, batch=shape.batch if quick or gpu else shape.batch // 2)
    s = scaling(base, dev, reps=2 if quick else 4,
                batches=[base.batch * f // 2 for f in ((1, 2, 4) if quick else (1, 2, 4, 8))],
                ks=[10, 20, 40] if quick else [10, 20, 40, 80], tokens=[8, 16, 32] if quick else [8, 16, 32, 64])
    print("loading and pools ...", file=sys.stderr, flush=True)
    bacl_row = w["rows"][-1]
    lo = loading(shape, dev, reps, consumed_per_s=shape.batch / bacl_row["total_s"])
    p = pools(quick)
    result = {"date": datetime.date.today().isoformat(), "quick": quick, "device_used": dev,
              "device": {**info, "load_avg_1m_end": os.getloadavg()[0]}, "waterfall": w, "end_to_end": e,
              "scaling": s, "loading": lo, "pools": p, "wall_s": time.perf_counter() - start}
    out = args.out or RESULTS / f"{info['host']}-{result['date']}{'-quick' if quick else ''}.json"
    text = summary(result)
    write_json(out, result)
    write_text(out.with_suffix(".md"), text + "\n")
    print(text)
    print(f"written to {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
