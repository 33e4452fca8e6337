"""The two-stream loader's batches as digests: the golden that keeps K = 2 bit-identical.

``streams_k2.json`` was written by ``python -m tests.pipeline.data.golden_k2 OUT`` with the loader
as it was before typed streams existed (``data.speech`` + ``data.sound`` only), at one thread. The
workers' part of a batch (keys, int16 clips, uint8 crops, every draw) is integer data; the finished
float tensors came out the same under each of torch's CPU capabilities (``ATEN_CPU_CAPABILITY`` =
avx512, avx2, default: run again, the script compares instead of writing). Each digest covers the
fields the old loader produced, so fields added since are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.data.arena import release, unpack
from pipeline.data.config import LoaderConfig
from pipeline.data.loader import TrainLoader, finish_batch
from pipeline.data.mixing import MaskConfig, MixConfig, SpliceConfig, mix_batch, mix_pair, valid_mask

GOLDEN = Path(__file__).with_name("streams_k2.json")
TRANSPORT = ("arena", "arena_ref", "arena_end", "layout", "worker_stats")


def digest(value) -> str:
    """sha256 of a tensor, array or JSON-able value (dtype and shape included)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous().numpy()
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)
        data = f"{value.dtype}{value.shape}".encode() + value.tobytes()
    else:
        data = json.dumps(value, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def configs(root) -> dict[str, LoaderConfig]:
    """The recorded runs on the session's tiny shards (``tests/conftest.py``)."""
    base = dict(
        speech=str(root / "speech"),
        sound=str(root / "sound"),
        batch_size=4,
        image_size=32,
        clip_seconds=3.0,
        shuffle_buffer=8,
        seed=0,
    )
    loud = MixConfig(level_db=(-12.0, 0.0))  # the peak guard acts
    return {
        "resampled_w0_splice_mask": LoaderConfig(
            **base,
            num_workers=0,
            epoch_samples=16,
            mix=loud,
            splice=SpliceConfig(prob=0.5),
            masking=MaskConfig(prob=0.5),
        ),
        "resampled_w2": LoaderConfig(**base, num_workers=2, epoch_samples=16),
        "finite_w2": LoaderConfig(**base, num_workers=2, resampled=False),
        "eval_w0": LoaderConfig(**base, num_workers=0, epoch_samples=8, train=False),
    }


def raw_digest(raw: dict) -> dict[str, str]:
    out = {name: digest(value) for name, value in raw.items() if name not in TRANSPORT}
    n = len(raw["speech_key"])
    for name, value in unpack(raw).items():
        out[f"arena:{name}"] = digest(value[:n] if name.endswith("_audio") else value)
    return out


def run_digests(cfg: LoaderConfig, skip: int = 0, state: dict | None = None, stop: int | None = None):
    """Per batch: (raw digests, finished digests); also the loader's state after ``stop`` batches."""
    loader = TrainLoader(cfg)
    if state is not None:
        loader.restore(state)
    batches, saved = [], None
    for raw in loader.raw_batches(skip):
        if "speech_key" not in raw:
            batches.append(({}, {}))
            continue
        finished = finish_batch(raw, cfg)
        batches.append((raw_digest(raw), {name: digest(value) for name, value in finished.items()}))
        release(raw)
        if stop is not None and len(batches) == stop:
            saved = json.loads(json.dumps(loader.state()))
            break
    return batches, saved


def mixer_inputs():
    """Edge cases of the mixer: silent speech, silent sound, both silent, loud (peak guard), masks."""
    rng = np.random.default_rng(7)
    n, b = 8000, 6
    speech = torch.from_numpy((0.3 * rng.standard_normal((b, n))).astype(np.float32))
    sound = torch.from_numpy((rng.uniform(0.01, 2.0, (b, 1)) * rng.standard_normal((b, n))).astype(np.float32))
    valid_s = torch.tensor([n, 6000, 300, n, 7000, 100])
    valid_n = torch.tensor([5000, n, n, 4000, 7000, 8000])
    ms, mn = valid_mask(valid_s, n), valid_mask(valid_n, n)
    speech, sound = speech * ms, sound * mn
    speech[1] = 0  # silent speech
    sound[2] = 0  # silent sound
    speech[3], sound[3] = 0, 0  # both silent
    snr = torch.from_numpy(rng.uniform(-5, 5, b).astype(np.float32))
    level = torch.tensor([-3.0, -30.0, -1.0, -20.0, 0.0, -25.0])
    return speech, sound, ms, mn, snr, level


def mixer_digests() -> dict[str, str]:
    speech, sound, ms, mn, snr, level = mixer_inputs()
    mix = mix_batch(speech, sound, ms, mn, snr, level, MixConfig())
    out = {f"batch:{k}": digest(getattr(mix, k)) for k in ("mixture", "speech", "sound", "snr_db", "clip_scale")}
    pair = mix_pair(speech[4].numpy(), sound[4].numpy(), np.random.default_rng(3), MixConfig(), 7000, 7000)
    out.update({f"pair:{k}": digest(getattr(pair, k)) for k in ("mixture", "speech", "sound")})
    out["pair:draws"] = digest([pair.snr_db, pair.level_db, pair.clip_scale])
    return out


def differences(recorded: list[dict], got: list[dict]) -> list[str]:
    """Where batches differ from the recorded ones, field by field; the fields each recorded batch
    names only (the loader may add fields)."""
    if len(got) != len(recorded):
        return [f"{len(got)} batches, recorded {len(recorded)}"]
    return [
        f"batch {i}: {name}"
        for i, (old, new) in enumerate(zip(recorded, got))
        for name in old
        if new.get(name) != old[name]
    ]


def capture(root) -> dict:
    """What the golden records for this CPU capability (the shards under ``root``)."""
    runs = {name: run_digests(cfg)[0] for name, cfg in configs(root).items()}
    first, state = run_digests(configs(root)["resampled_w2"], stop=3)
    return {
        "raw": {name: [r for r, _ in batches] for name, batches in runs.items()},
        "finished": {name: [f for _, f in batches] for name, batches in runs.items()},
        "resume_state": state,  # TrainLoader.state() after 3 batches of resampled_w2, as written then
        "mixer": mixer_digests(),
    }


def main(out: str):
    """Build the session's tiny shards under ``out`` and record (or extend) the golden."""
    from tests.support import shardgen

    root = Path(out)
    if not (root / "speech").exists():
        shardgen.build(root / "speech", "speech", 46, 6)
        shardgen.build(root / "sound", "sound", 20, 5, seed0=1000)
    torch.set_num_threads(1)
    capability = torch.backends.cpu.get_cpu_capability()
    got = capture(root)
    if GOLDEN.exists():  # compare (the resume state was written in the cursor format of its time)
        golden = json.loads(GOLDEN.read_text())
        problems = [
            f"{part} {name} {problem}"
            for part in ("raw", "finished")
            for name in golden[part]
            for problem in differences(golden[part][name], got[part][name])
        ]
        problems += [] if golden["mixer"] == got["mixer"] else ["mixer"]
        print(capability, "matches" if not problems else f"DIFFERS from {GOLDEN}: {problems}")
        return
    GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(capability, "recorded in", GOLDEN)


if __name__ == "__main__":
    main(sys.argv[1])
