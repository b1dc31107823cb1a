"""Synthetic speech from ``espeak-ng`` (Debian ``espeak-ng``): spoken keywords in many voices, made once and cached.

A *voice* is an English accent of espeak-ng (American, British, Scottish, Received Pronunciation, Lancashire,
West Midlands, Caribbean) with one of its voice variants (``+f2``, ``+croak``, ...), spoken at a speed and pitch drawn
per clip from a seeded generator. espeak-ng is a deterministic formant synthesiser: the same text, voice, speed and
pitch give the same samples, so a keyword set is a pure function of its options and the installed espeak-ng version.

Clips are synthesised in parallel subprocesses (``espeak-ng --stdout``, ~20 ms each) on first use, with a progress
bar, and cached as one ``.npz`` per set under ``$ATTNLAB_CACHE/data`` (default ``~/.cache/attnlab/data``), written
atomically (a killed run leaves no half-written cache; two processes may both write it).

Shapes: :func:`synthesise` -> ``(samples,)`` float32 in [-1, 1] at :data:`RATE`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.io import write_with
from .wav import read_wav_bytes

RATE = 22050  # espeak-ng's output rate
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
INSTALL = "apt-get install -y espeak-ng"


@dataclass(frozen=True)
class Clip:
    """One utterance: ``word`` said by ``voice`` (``accent+variant``) at ``speed`` words/minute and ``pitch`` (0-99)."""

    word: str
    voice: str
    speed: int
    pitch: int


def espeak() -> str:
    """The espeak-ng executable.

    Raises:
        FileNotFoundError: espeak-ng is not installed (names the install command).
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError(f"the keyword datasets synthesise speech with espeak-ng, which is not installed: run "
                                f"`{INSTALL}` (make data does)")
    return exe


def variants() -> list[str]:
    """espeak-ng's voice variants (``f2``, ``croak``, ...), sorted: the second half of every voice name."""
    out = subprocess.run([espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1].split("/")[-1] for line in out.splitlines()[1:] if "!v/" in line}
    return sorted(names, key=str.lower)


def voices() -> list[str]:
    """Every ``accent+variant`` voice, in a fixed order (accent-major), e.g. ``en-us+f2``."""
    return [f"{accent}+{v}" for accent in ACCENTS for v in variants()]


def version() -> str:
    """espeak-ng's version line (part of every cache key: another version speaks differently)."""
    return subprocess.run([espeak(), "--version"], capture_output=True, text=True, check=True).stdout.strip()


def synthesise(clip: Clip) -> np.ndarray:
    """``clip`` spoken: ``(samples,)`` float32 at :data:`RATE`.

    Raises:
        RuntimeError: espeak-ng failed (its message), or produced no sound.
    """
    done = subprocess.run([espeak(), "-v", clip.voice, "-s", str(clip.speed), "-p", str(clip.pitch), "--stdout",
                           clip.word], capture_output=True, timeout=60)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng could not say {clip.word!r} with voice {clip.voice}: "
                           f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    wave, rate = read_wav_bytes(done.stdout, f"espeak-ng output for {clip.word!r}")
    if rate != RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz audio, expected {RATE}")
    return wave.numpy()


def cache_dir() -> Path:
    """``$ATTNLAB_CACHE/data`` or ``~/.cache/attnlab/data``."""
    root = os.environ.get("ATTNLAB_CACHE") or Path.home() / ".cache" / "attnlab"
    return Path(root) / "data"


def synthesise_all(clips: list[Clip], workers: int = 4, progress: bool = True) -> list[np.ndarray]:
    """Every clip of ``clips`` (in order), from the cache or synthesised now and cached.

    Raises:
        FileNotFoundError: espeak-ng is missing. RuntimeError: a clip could not be synthesised.
    """
    key = hashlib.sha256(json.dumps([version(), [vars(c) for c in clips]]).encode()).hexdigest()[:20]
    path = cache_dir() / f"speech-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                flat, ends = z["samples"], z["ends"]
            return np.split(flat, ends[:-1])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache: made again below
    waves = _run(clips, workers, progress)
    ends = np.cumsum([len(w) for w in waves])
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, samples=np.concatenate(waves).astype(np.float32), ends=ends)
        tmp.write_bytes(buf.getvalue())

    write_with(path, write)
    return waves


def _run(clips: list[Clip], workers: int, progress: bool) -> list[np.ndarray]:
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool:  # subprocesses: the threads only wait
        it = pool.map(synthesise, clips)
        return list(tqdm(it, total=len(clips), desc="synthesising speech (espeak-ng, once)", unit="clip",
                         disable=not progress, leave=False))

