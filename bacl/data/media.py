"""Decoding raw media as the datasets store it: JPEG bytes, video files, audio files.

Every decoder raises `CorruptSample` with a short reason for anything it cannot read, so
that an adapter can count and skip the sample by key instead of crashing a long extraction.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.signal import resample_poly

from bacl.extras import optional_import

av = optional_import("av")  # the [media] extra
soundfile = optional_import("soundfile")


class CorruptSample(Exception):
    """A sample that exists but cannot be decoded (the reason is the message)."""


def decode_image(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # force the full decode: a truncated JPEG fails here, not later
            return img.convert("RGB")
    except Exception as err:
        raise CorruptSample(f"image: {type(err).__name__}: {err}") from None


def video_frames(path: Path, n_frames: int) -> list[Image.Image]:
    """`n_frames` frames at the centres of equal segments of the clip (TSN-style uniform sampling).

    Decodes sequentially and keeps the first frame at or after each target time, so no
    seeking is needed and a clip is read once.
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            targets = [(i + 0.5) * duration / n_frames for i in range(n_frames)]
            frames: list[Image.Image] = []
            last = None
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                last = frame
                while len(frames) < n_frames and frame.time >= targets[len(frames)]:
                    frames.append(frame.to_image())
                if len(frames) == n_frames:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise CorruptSample(f"video: {type(err).__name__}: {err}") from None
    if last is None:
        raise CorruptSample("video: no decodable frame")
    if len(frames) < n_frames:  # a clip shorter than its header says: pad with its last frame
        if len(frames) < n_frames // 2:
            raise CorruptSample(f"video: only {len(frames)} of {n_frames} frames decodable (truncated?)")
        frames += [last.to_image()] * (n_frames - len(frames))
    return frames


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    raise CorruptSample("video: unknown duration")


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 waveform, sample rate) of an audio file, or of a video file's audio track."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data.mean(axis=1), rate
    except soundfile.LibsndfileError:
        pass  # not a plain audio file: try it as a container with an audio stream
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise CorruptSample("audio: no audio stream")
            stream = container.streams.audio[0]
            rate = stream.rate
            to_mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [out.to_ndarray()[0] for frame in container.decode(stream) for out in to_mono.resample(frame)]
            chunks += [out.to_ndarray()[0] for out in to_mono.resample(None)]
    except (av.error.FFmpegError, OSError) as err:
        raise CorruptSample(f"audio: {type(err).__name__}: {err}") from None
    if not chunks:
        raise CorruptSample("audio: no decodable samples")
    return np.concatenate(chunks).astype(np.float32), rate


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) to the encoder's rate."""
    if rate == target:
        return wave.astype(np.float32, copy=False)
    ratio = Fraction(target, rate)
    return resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)
