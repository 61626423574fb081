"""Tiny datasets in the four real on-disk formats, for tests, demos and the extraction benchmark.

Each item is a (colour, shape, pitch) tuple rendered as a real JPEG / MP4 / WAV file and
described by captions that name the same attributes, so a model trained on the extracted
features has something to learn. `corrupt=True` adds one undecodable sample per dataset
(a truncated JPEG, a truncated MP4, a WAV with a broken header) that extraction must count
and skip. Usage: `python -m bacl.data.fixtures <dir>` writes all four under <dir>/<name>.
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import pandas as pd
import soundfile
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("square", "circle", "triangle")
PITCHES = {"low": 220.0, "high": 880.0}
SIZE, FPS, RATE = 64, 8, 16000


def _attributes(i: int) -> tuple[str, str, str]:
    colours = list(COLOURS)
    return colours[i % 4], SHAPES[(i // 4) % 3], list(PITCHES)[(i // 12) % 2]


def _picture(i: int, shift: float = 0.0, size: int = SIZE) -> Image.Image:
    colour, shape, _ = _attributes(i)
    img = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    x = 8 + int(shift * 24)
    box = (x, 16, x + 32, 48)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    elif shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    else:
        draw.polygon([(x, 48), (x + 16, 16), (x + 32, 48)], fill=COLOURS[colour])
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
    return [f"a {colour} {shape}", f"a {shape} coloured {colour}"][variant % 2] + f" with a {pitch} tone"


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


def laion400m(root: Path, n: int = 48, per_shard: int = 16, corrupt: bool = True, size: int = SIZE) -> Path:
    """img2dataset webdataset shards: `{00000..}.tar` with <key>.jpg, <key>.txt, <key>.json (size x size JPEGs)."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                key = f"{s // per_shard:05d}{i:04d}"
                jpg = _jpeg(_picture(i, size=size))
                if corrupt and i == 1:
                    jpg = jpg[: len(jpg) // 3]
                meta = {"key": key, "caption": _caption(i), "url": f"https://example.org/{key}.jpg",
                        "status": "success", "width": size, "height": size}
                for ext, payload in (("jpg", jpg), ("txt", _caption(i).encode()), ("json", json.dumps(meta).encode())):
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
