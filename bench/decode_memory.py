"""Peak memory of decoding one long file for a shard: the whole file vs only the range kept.

    python bench/decode_memory.py [--minutes 5 --channels 8 --sample-rate 48000 --workdir /tmp/bench-decode]

Generates a long multichannel 16-bit WAV (and a Matroska copy of the same PCM, which goes through
ffmpeg), then runs each decode path in a fresh child process and prints the child's peak RSS
(``ru_maxrss``):

* ``baseline``: the imports and one standardized 10 s clip (torch's resampler included), no file;
* ``full``: ``audio.read`` of the whole file, then ``standardize`` (what a loader did before);
* ``range``: ``audio.read_clip``, then ``standardize`` (what the corpus loaders do now).

Every figure comes from this run; the clips of ``full`` and ``range`` are checked to be equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline import audio, ffmpeg


def write_long_wav(path: Path, minutes: float, channels: int, sample_rate: int) -> Path:
    """A tone per channel plus noise, written a second at a time (the parent stays small)."""
    rng = np.random.default_rng(0)
    t = np.arange(sample_rate) / sample_rate
    with sf.SoundFile(path, "w", sample_rate, channels, subtype="PCM_16") as f:
        for second in range(int(minutes * 60)):
            block = np.stack([0.2 * np.sin(2 * np.pi * (200 + 50 * c) * (t + second)) for c in range(channels)], axis=1)
            f.write(block + 0.01 * rng.standard_normal(block.shape))
    return path


def child(mode: str, path: str) -> None:
    """Run one decode path and print its peak RSS and a digest of the clip."""
    if mode == "baseline":
        clip, _ = audio.standardize(np.zeros((1, 480_000), np.float32) + 0.1, 48_000)
    elif mode == "full":
        samples, sr = audio.read(path)
        clip, _ = audio.standardize(samples, sr)
    else:
        decoded = audio.read_clip(path)
        clip, _ = audio.standardize(decoded.samples, decoded.sample_rate)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_mb": round(peak_kib / 1024, 1), "clip_sha1": hashlib.sha1(clip.tobytes()).hexdigest()}))


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--sample-rate", type=int, default=48_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-decode"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    wav = write_long_wav(args.workdir / "long.wav", args.minutes, args.channels, args.sample_rate)
    mka = args.workdir / "long.mka"
    ffmpeg.run(["-y", "-i", str(wav), "-c:a", "copy", str(mka)])
    print(
        f"{args.minutes:g} min, {args.channels} ch, {args.sample_rate} Hz: {wav.stat().st_size / 2**20:.0f} MiB as WAV"
    )
    baseline = measure("baseline", wav)["peak_mb"]
    print(f"baseline (imports + one 10 s clip): {baseline:.0f} MB peak RSS")
    for path, reader in ((wav, "libsndfile"), (mka, "ffmpeg")):
        full, ranged = measure("full", path), measure("range", path)
        same = "same clip" if full["clip_sha1"] == ranged["clip_sha1"] else "CLIPS DIFFER"
        print(
            f"{path.suffix[1:]} ({reader}): whole file {full['peak_mb']:.0f} MB -> range {ranged['peak_mb']:.0f} MB "
            f"peak RSS ({full['peak_mb'] - baseline:.0f} -> {ranged['peak_mb'] - baseline:.0f} MB "
            f"above baseline; {same})"
        )


if __name__ == "__main__":
    main()
