"""Tiny datasets in the four real on-disk formats, for tests, demos and the extraction benchmark.

Each item is a (colour, shape, pitch, size) tuple rendered as a real JPEG / MP4 / WAV file
and described by captions that name the same attributes, so a model trained on the extracted
features has something to learn. The first 48 items are distinct (captions and pictures; the
pitch sets the picture's background), so the default fixtures have no duplicates across their
splits. `corrupt=True` adds one undecodable sample per dataset (a truncated JPEG, a truncated
MP4, a WAV with a broken header) that extraction must count and skip; `laion400m(...,
plant_duplicates=True)` plants duplicate captions and images (LAION_PLANTED).
Usage: `python -m bacl.data.fixtures <dir>` writes all four under <dir>/<name>.
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from bacl.extras import optional_import

av = optional_import("av")  # the [media] extra
soundfile = optional_import("soundfile")

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle", "triangle")
PITCHES = {"low": 220.0, "high": 880.0}
SIZES = {"large": 32, "small": 20}  # side of the drawn shape, in pixels
BACKGROUND = {"low": (235, 235, 235), "high": (200, 200, 200)}
SIZE, FPS, RATE = 64, 8, 16000

# LAION duplicates planted by laion400m(n=24, per_shard=8, plant_duplicates=True); the test split is
# items 16-23 (the last shard). kind -> (source item, copy item): the copy gets the source's caption or
# JPEG bytes. Train pairs must drop out of each other's pool; test copies must leave the test split.
LAION_PLANTED = {
    "train_same_caption": (3, 5),
    "train_same_image": (6, 9),
    "test_same_caption": (10, 17),
    "test_same_image": (12, 19),
    "test_same_caption_up_to_case": (14, 21),  # the copy's caption is the source's in capitals, spaces doubled
}


def _attributes(i: int) -> tuple[str, str, str]:
    colours = list(COLOURS)
    return colours[i % 4], SHAPES[(i // 4) % 3], list(PITCHES)[(i // 12) % 2]


def _size(i: int) -> str:
    return list(SIZES)[(i // 24) % 2]


def _picture(i: int, shift: float = 0.0, size: int = SIZE) -> Image.Image:
    colour, shape, pitch = _attributes(i)
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND[pitch])
    draw = ImageDraw.Draw(img)
    side = SIZES[_size(i)]
    x, y = 8 + int(shift * 24), 16 + (32 - side) // 2
    box = (x, y, x + side, y + side)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon([(x, y + side), (x + side // 2, y), (x + side, y + side)], fill=COLOURS[colour])
    if size == SIZE:
        return img
    # Web-photo-like size and texture for decoding benchmarks: smooth scaling plus fine noise.
    noise = np.random.default_rng(i).integers(-12, 13, (size, size, 3))
    big = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.int16) + noise
    return Image.fromarray(big.clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _tone(i: int, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * PITCHES[_attributes(i)[2]] * t)).astype(np.float32)


def _caption(i: int, variant: int = 0) -> str:
    colour, shape, pitch = _attributes(i)
    size = _size(i)
    return [f"a {size} {colour} {shape}", f"a {size} {shape} coloured {colour}"][variant % 2] + f" with a {pitch} tone"


def laion_key(i: int, per_shard: int) -> str:
    """The key laion400m() gives item i."""
    return f"{i // per_shard:05d}{i:04d}"


def _write_video(path: Path, i: int, seconds: float = 2.0, audio: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=FPS)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=RATE, layout="mono") if audio else None
        n = int(seconds * FPS)
        for f in range(n):  # the shape moves from left to right
            frame = av.VideoFrame.from_image(_picture(i, shift=f / max(1, n - 1)))
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            wave = _tone(i, seconds)
            for start in range(0, wave.size, 1024):
                chunk = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="flt", layout="mono")
                chunk.sample_rate = RATE
                out.mux(sound.encode(chunk))
            out.mux(sound.encode())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _planted(n: int, per_shard: int, corrupt: bool) -> tuple[dict[int, int], dict[int, str]]:
    """(copy -> the item whose JPEG it gets, copy -> its caption) for LAION_PLANTED."""
    test_start = (n - 1) // per_shard * per_shard
    image, text = {}, {}
    for kind, (source, copy) in LAION_PLANTED.items():
        in_test = copy >= test_start
        if copy >= n or source >= test_start or in_test != kind.startswith("test") or (corrupt and 1 in (source, copy)):
            raise ValueError(f"plant_duplicates needs n=24, per_shard=8 (the test split is the last shard); "
                             f"got n={n}, per_shard={per_shard}, which puts {kind} {(source, copy)} elsewhere")
        if kind.endswith("same_image"):
            image[copy] = source
        elif kind.endswith("up_to_case"):
            text[copy] = "  ".join(_caption(source).upper().split())
        else:
            text[copy] = _caption(source)
    return image, text


def laion400m(root: Path, n: int = 48, per_shard: int = 16, corrupt: bool = True, size: int = SIZE,
              plant_duplicates: bool = False) -> Path:
    """img2dataset webdataset shards: `{00000..}.tar` with <key>.jpg, <key>.txt, <key>.json (size x size JPEGs).

    `plant_duplicates`: the pairs of LAION_PLANTED share a caption or the same JPEG bytes (n=24, per_shard=8).
    """
    root.mkdir(parents=True, exist_ok=True)
    image_of, caption_of = _planted(n, per_shard, corrupt) if plant_duplicates else ({}, {})
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                key = laion_key(i, per_shard)
                jpg = _jpeg(_picture(image_of.get(i, i), size=size))
                if corrupt and i == 1:
                    jpg = jpg[: len(jpg) // 3]
                caption = caption_of.get(i, _caption(i))
                meta = {"key": key, "caption": caption, "url": f"https://example.org/{key}.jpg",
                        "status": "success", "width": size, "height": size}
                for ext, payload in (("jpg", jpg), ("txt", caption.encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


def webvid10m(root: Path, n: int = 24, n_val: int = 8, corrupt: bool = True) -> Path:
    """The released CSVs (videoid, contentUrl, duration, page_dir, name) + videos/<page_dir>/<videoid>.mp4."""
    for csv, ids in (("results_10M_train.csv", range(n)), ("results_10M_val.csv", range(n, n + n_val))):
        rows = []
        for i in ids:
            page_dir = f"{i // 10:03d}_{i // 10:03d}"
            videoid = f"{1000 + i}"
            _write_video(root / "videos" / page_dir / f"{videoid}.mp4", i)
            if corrupt and i == 2:
                _truncate(root / "videos" / page_dir / f"{videoid}.mp4")
            rows.append({"videoid": videoid, "contentUrl": f"https://example.org/{videoid}.mp4",
                         "duration": "PT00H00M02S", "page_dir": page_dir, "name": _caption(i)})
        pd.DataFrame(rows).to_csv(root / csv, index=False)
    return root


def wavtext5k(root: Path, n: int = 32, corrupt: bool = True) -> Path:
    """WavText5K.csv (view_link, download_link, title, description, fname, tags) + audios/<fname>."""
    (root / "audios").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        fname = f"{i:04d}.wav"
        rate = 44100 if i % 2 else RATE  # files at several rates: extraction must resample
        soundfile.write(root / "audios" / fname, _tone(i, 1.0 + 0.25 * (i % 3), rate), rate)
        if corrupt and i == 3:
            (root / "audios" / fname).write_bytes(b"RIFF\x00\x00not a wave file")
        rows.append({"view_link": f"https://example.org/{i}", "download_link": f"https://example.org/{fname}",
                     "title": _caption(i, 1), "description": _caption(i) if i % 5 else "", "fname": fname, "tags": ""})
    pd.DataFrame(rows).to_csv(root / "WavText5K.csv", index=False)
    return root


def vast27m(root: Path, n: int = 24, corrupt: bool = True) -> Path:
    """The annotation JSON (clip_id, vision_cap, audio_cap, subtitle, vast_cap) + videos/<clip_id>.mp4 with audio."""
    records = []
    for i in range(n):
        clip_id = f"clip{i:05d}"
        _write_video(root / "videos" / f"{clip_id}.mp4", i, audio=True)
        if corrupt and i == 4:
            _truncate(root / "videos" / f"{clip_id}.mp4")
        colour, shape, pitch = _attributes(i)
        records.append({"clip_id": clip_id, "vision_cap": [f"a {colour} {shape} moves right"] * 2,
                        "audio_cap": [f"a {pitch} tone"] * 2, "subtitle": f"look at the {shape}",
                        "vast_cap": [_caption(i, 0), _caption(i, 1)]})
    (root / "annotations.json").write_text(json.dumps(records))
    return root


WRITERS = {"laion400m": laion400m, "webvid10m": webvid10m, "wavtext5k": wavtext5k, "vast27m": vast27m}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bacl.data.fixtures <dir>")
    for name, write in WRITERS.items():
        print(write(Path(sys.argv[1]) / name))
