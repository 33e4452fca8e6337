"""pipeline.prep.writer: the shard tar writer."""

import hashlib
import io

import numpy as np
from PIL import Image
from webdataset import TarWriter

from pipeline import format as fmt
from pipeline.prep.writer import TarShardWriter
from pipeline.shard_dir import PARTIAL_SUFFIX


def _sample(i: int) -> dict:
    audio = np.zeros(fmt.CLIP_SAMPLES, dtype=np.float32)
    audio[: 100 * (i + 1)] = 0.1
    meta = {
        "source": "test",
        "source_id": str(i),
        "audio_type": "sound",
        "clip_start": 0.0,
        "clip_end": 1.0,
        "duration": 1.0,
        "orig_sample_rate": 16_000,
        "orig_channels": 1,
    }
    image = Image.new("RGB", (fmt.IMAGE_SHORT_SIDE + i, fmt.IMAGE_SHORT_SIDE), (10 * i, 20, 30))
    return fmt.encode_sample(f"k_{i}", audio, image, meta)


def test_shard_tars_are_byte_for_byte_what_webdatasets_tar_writer_writes(tmp_path):
    samples = [_sample(i) for i in range(3)]
    writer = TarShardWriter(tmp_path / "000000.tar")
    for sample in samples:
        writer.add(sample)
    size, sha = writer.close()
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))
    expected = io.BytesIO()
    with TarWriter(expected, user="", group="", mtime=0, encoder=False) as reference:
        for sample in samples:
            reference.write(sample)
    written = (tmp_path / "000000.tar").read_bytes()
    assert written == expected.getvalue()
    assert (size, sha) == (len(written), hashlib.sha256(written).hexdigest())
