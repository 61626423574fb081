"""Extraction throughput: LAION-style samples per second through decode, the frozen encoder and the store.

    python benchmarks/extract_throughput.py [--quick] [--out PATH]

The encoder is open_clip ViT-B-16 with random weights: the same architecture, so the same
cost, as the pretrained one, without a download. Measured on this machine, in one run:
  decode    JPEG decode + resize/crop/normalise of one sample, one process (the DataLoader worker's job)
  encode    the frozen image + text towers on a batch of 32 (fp32 on CPU, bf16 autocast on GPU)
  end2end   experiments/extract.py's path (shard listing, decode in a worker, encode, fp16 store write)
plus the FLOPs of one sample (counted from the architecture) and the store's bytes per sample. From
those numbers it projects LAION-400M extraction on one GPU node; the node's GPU peak, the
fraction of it reached, and its decode cores are assumptions, printed beside the result.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bacl.config import load_config  # noqa: E402
from bacl.data import fixtures  # noqa: E402
from bacl.extract import _Samples, extract_features, load_towers  # noqa: E402
from bacl.registry import DATASETS  # noqa: E402
from benchmarks.common import device, timed, write_result  # noqa: E402

ENCODER = ["dataset.vision_encoder.model=ViT-B-16", "dataset.vision_encoder.pretrained=null",
           "dataset.text_encoder.model=ViT-B-16", "dataset.text_encoder.pretrained=null"]
LAION = 400_000_000
# Projection assumptions (not measured here): one node of 8 A100s, bf16 dense peak 312 TFLOP/s,
# 35 % of it reached by a ViT-B/16 inference loop, 64 cores decoding JPEGs.
NODE = {"gpus": 8, "peak_flops": 312e12, "utilisation": 0.35, "decode_cores": 64}


def flops_per_sample(clip: torch.nn.Module) -> dict[str, float]:
    """Analytic forward FLOPs: 2 x weights x tokens, plus attention's 4 x L^2 x width per layer.

    (torch's FLOP counter misses the fused attention kernel open_clip uses at inference.)
    """
    def tower(blocks: torch.nn.Module, extra: int, tokens: int) -> float:
        weights = sum(p.numel() for p in blocks.parameters()) + extra
        layers, width = len(blocks.resblocks), blocks.width
        return 2.0 * weights * tokens + 4.0 * layers * tokens ** 2 * width
    v = clip.visual
    patch = sum(p.numel() for p in v.conv1.parameters())
    patches = v.grid_size[0] * v.grid_size[1]
    image = tower(v.transformer, v.proj.numel(), 1 + patches) + 2.0 * patch * patches
    text = tower(clip.transformer, clip.text_projection.numel(), clip.context_length)
    return {"image": image, "captions": text}


def run(n: int, size: int, batch: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bacl-extract-bench-"))
    try:
        root = fixtures.laion400m(work / "laion", n=n, per_shard=max(1, n // 2), corrupt=False, size=size)
        cfg = load_config(["dataset=laion400m", f"dataset.root={root}", f"dataset.store={work / 'store'}", *ENCODER])
        dataset_cls = DATASETS.entry("laion400m").load()
        towers = load_towers(dataset_cls, cfg.dataset, cfg.train.device)
        entries = [e for shard in dataset_cls.shards(cfg.dataset) for e in dataset_cls.entries(cfg.dataset, shard)]
        samples = _Samples(dataset_cls, cfg.dataset, entries, towers)
        prepared, decode_s = timed(lambda: [samples[i] for i in range(len(samples))])
        images = torch.stack([p.streams["image"] for p in prepared[:batch]])
        captions = torch.stack([p.captions[0] for p in prepared[:batch]])
        towers["image"](images[:2])  # warm-up
        _, image_s = timed(towers["image"], images)
        _, text_s = timed(towers["captions"], captions)
        store, end2end_s = timed(extract_features, cfg, 0, 1, 1, batch)
        store_bytes = sum(f.stat().st_size for f in (store.path / "shards").rglob("*.npy"))
        return {"n": n, "image_px": size, "batch": batch,
                "decode_per_s": n / decode_s, "encode_per_s": batch / (image_s + text_s),
                "encode_image_per_s": batch / image_s, "end2end_per_s": n / end2end_s,
                "flops": flops_per_sample(towers["image"].encoder.module), "store_bytes_per_sample": store_bytes / n}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def project(r: dict) -> dict:
    flops = sum(r["flops"].values())
    gpu_s = LAION * flops / (NODE["gpus"] * NODE["peak_flops"] * NODE["utilisation"])
    decode_s = LAION / (r["decode_per_s"] * NODE["decode_cores"])
    return {"assumptions": NODE, "gpu_hours": gpu_s / 3600, "decode_hours": decode_s / 3600,
            "node_hours": max(gpu_s, decode_s) / 3600, "bound_by": "GPU" if gpu_s > decode_s else "JPEG decoding",
            "store_tb": LAION * r["store_bytes_per_sample"] / 1e12,
            "this_machine_days": LAION / r["end2end_per_s"] / 86400}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 samples (well under a minute)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    info = device()
    result = run(n=64 if args.quick else 256, size=384, batch=32)
    projection = project(result)
    path = write_result("extract_throughput", {"device": info, "encoder": "open_clip ViT-B-16 (random weights)",
                                               "result": result, "laion400m_projection": projection}, args.out)
    where = info["gpu"] or f"{info['cpu']} ({info['torch_threads']} threads)"
    print(f"extraction throughput on {where}, ViT-B-16, {result['image_px']} px JPEGs, {result['n']} samples:")
    print("| stage | samples/s |\n|---|---:|")
    for key, label in (("decode_per_s", "decode + preprocess (1 process)"), ("encode_image_per_s", "image tower"),
                       ("encode_per_s", "image + text towers"), ("end2end_per_s", "extract.py end to end (1 worker)")):
        print(f"| {label} | {result[key]:.1f} |")
    f = result["flops"]
    print(f"FLOPs per sample: image {f['image'] / 1e9:.1f} G, caption {f['captions'] / 1e9:.1f} G; "
          f"store {result['store_bytes_per_sample'] / 1e3:.1f} kB per sample")
    a = projection["assumptions"]
    print(f"LAION-400M projection: {projection['node_hours']:.0f} h on one node of {a['gpus']} GPUs at "
          f"{a['peak_flops'] / 1e12:.0f} TFLOP/s x {a['utilisation']:.0%} with {a['decode_cores']} decode cores "
          f"(GPU {projection['gpu_hours']:.0f} h, decode {projection['decode_hours']:.0f} h: bound by {projection['bound_by']}); "
          f"store {projection['store_tb']:.1f} TB; this machine alone: {projection['this_machine_days']:.0f} days")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
