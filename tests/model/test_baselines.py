"""The baselines' release formats: tiny ImageBind / CAV-MAE files built from the committed key manifest
(tests/model/fixtures/baseline_keys.json) and saved as the releases are, read by ``load_any``, and
checked against a reference computation of both networks, DenseAV's fbank, heatmap and retrieval
written here in plain torch; the real-size modules against the manifest on the meta device; broken
files through the real CLIs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from safetensors.torch import save_file
from torch.nn import functional as F
from typer.testing import CliRunner

from evaluation.runner import ModelRunner
from model.baselines import fbank
from model.baselines.cavmae import CAVMAEModel
from model.baselines.common import BaselineConfig
from model.baselines.imagebind import ImageBindModel
from model.checkpoint import CheckpointError
from model.loading import load_any

MANIFEST = json.loads((Path(__file__).parent / "fixtures" / "baseline_keys.json").read_text())
IB, CM = MANIFEST["imagebind"], MANIFEST["cavmae"]
CLIP = 164_200
RUN = CliRunner()


# --------------------------------------------------------------------------- building files


def dim(formula: str, sizes: dict) -> int:
    """A shape formula of the manifest: sums of products of sizes and integers."""
    return sum(math.prod(int(f) if f.isdigit() else sizes[f] for f in term.split("*")) for term in formula.split("+"))


def expand(entries: list, sizes: dict) -> dict[str, tuple[int, ...]]:
    out = {}
    for entry in entries:
        shape = tuple(dim(f, sizes) for f in entry["shape"])
        if "for" in entry:
            var, bound = entry["for"].split("<")
            out.update({entry["key"].replace("{" + var + "}", str(i)): shape for i in range(sizes[bound])})
        else:
            out[entry["key"]] = shape
    return out


def random_state(layout: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        t = torch.randn(shape, generator=g)
        parts = key.split(".")
        layer_norm = (
            len(parts) > 1
            and "norm" in parts[-2]
            or key.endswith(("pre_transformer_layer.0.weight", "heads.vision.0.weight", "heads.audio.0.weight"))
        )
        if key.endswith("log_logit_scale"):
            t = torch.tensor(math.log(20.0))
        elif layer_norm and key.endswith("weight"):
            t = 1 + 0.1 * t
        else:
            t = 0.1 * t if t.dim() > 1 else 0.02 * t
        state[key] = t
    return state


def imagebind_state(seed: int = 0) -> dict[str, torch.Tensor]:
    sizes = IB["sizes"]["tiny"]
    return random_state(expand(IB["keys"], sizes) | expand(IB["ignored_examples"], sizes), seed)


def cavmae_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """As the release: DataParallel's ``module.`` on every key, the MAE decoder included."""
    sizes = CM["sizes"]["tiny"]
    state = random_state(expand(CM["keys"], sizes) | expand(CM["decoder_keys"], sizes), seed)
    return {CM["prefix"] + k: v for k, v in state.items()}


def save(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def imagebind_file(tmp_path_factory):
    return save(imagebind_state(), tmp_path_factory.mktemp("ib") / "imagebind_tiny.pth")


@pytest.fixture(scope="module")
def cavmae_file(tmp_path_factory):
    return save(cavmae_state(), tmp_path_factory.mktemp("cm") / "audio_model.21.pth")


# --------------------------------------------------------------------------- reference computations


def ln(x, s, p, eps):
    return F.layer_norm(x, x.shape[-1:], s[p + "weight"], s[p + "bias"], eps)


def attention(q, k, v, heads):
    b, n, d = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    w = ((q @ k.transpose(-2, -1)) / math.sqrt(d // heads)).softmax(-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


def ib_block(x, s, p, heads, bias_kv):
    """ImageBind's block: in_proj rows q|k|v, optional learned key/value tokens appended, eps 1e-6."""
    y = ln(x, s, p + "norm_1.", 1e-6)
    q, k, v = F.linear(y, s[p + "attn.in_proj_weight"], s[p + "attn.in_proj_bias"]).chunk(3, -1)
    if bias_kv:
        k = torch.cat([k, s[p + "attn.bias_k"].expand(x.shape[0], 1, -1)], 1)
        v = torch.cat([v, s[p + "attn.bias_v"].expand(x.shape[0], 1, -1)], 1)
    x = x + F.linear(attention(q, k, v, heads), s[p + "attn.out_proj.weight"], s[p + "attn.out_proj.bias"])
    h = F.gelu(F.linear(ln(x, s, p + "norm_2.", 1e-6), s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
    return x + F.linear(h, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])


def ib_reference_image(s, images, heads=2):
    """(unit tokens [B, 16, 16, O], unit CLS [B, O]) of ImageBind's vision tower."""
    p = "modality_preprocessors.vision."
    video = torch.stack([images, images], 2)  # the still image as 2 frames
    x = F.conv3d(video, s[p + "rgbt_stem.proj.1.weight"], stride=(2, 14, 14)).flatten(2).transpose(1, 2)
    x = torch.cat([s[p + "cls_token"].expand(len(x), -1, -1), x], 1) + s[p + "pos_embedding_helper.pos_embed"]
    x = ln(x, s, "modality_trunks.vision.pre_transformer_layer.0.", 1e-6)
    for i in range(IB["sizes"]["tiny"]["VL"]):
        x = ib_block(x, s, f"modality_trunks.vision.blocks.{i}.", heads, False)
    x = F.normalize(F.linear(ln(x, s, "modality_heads.vision.0.", 1e-6), s["modality_heads.vision.2.weight"]), dim=-1)
    return x[:, 1:].reshape(len(x), 16, 16, -1), x[:, 0]


def reference_fbank(clip: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """DenseAV's prep_waveform: pad to 164,200, remove the padded clip's mean, torchaudio's fbank."""
    wave = F.pad(torch.from_numpy(clip), (0, CLIP - len(clip)))
    spec = torchaudio.compliance.kaldi.fbank(
        wave.unsqueeze(0) - wave.mean(),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    return (spec - mean) / std


def ib_reference_audio(s, clip, heads=2):
    """(tokens [O, 12, 95], CLS [O]) of ImageBind's audio tower the way DenseAV's featurizer runs it."""
    spec = reference_fbank(clip, -4.268, 9.138)
    p = "modality_preprocessors.audio."
    tiles = torch.stack([spec[i * 204 : (i + 1) * 204].T for i in range(5)]).unsqueeze(1)  # [5, 1, 128, 204]
    x = F.conv2d(tiles, s[p + "rgbt_stem.proj.weight"], stride=10).flatten(2).transpose(1, 2)  # [5, 228, A]
    x = ln(x, s, p + "rgbt_stem.norm_layer.", 1e-5)
    x = torch.cat([s[p + "cls_token"].expand(5, -1, -1), x], 1) + s[p + "pos_embedding_helper.pos_embed"]
    for i in range(IB["sizes"]["tiny"]["AL"]):
        x = ib_block(x, s, f"modality_trunks.audio.blocks.{i}.", heads, True)
    x = F.linear(ln(x, s, "modality_heads.audio.0.", 1e-6), s["modality_heads.audio.2.weight"])
    x = 20.0 * F.normalize(x, dim=-1)
    tokens = torch.cat([x[i, 1:].reshape(12, 19, -1) for i in range(5)], 1)  # tiles one after another in time
    return tokens.permute(2, 0, 1), x[:, 0].mean(0)


def cm_block(x, s, p, norms, heads=2):
    y = ln(x, s, p + "norm1" + norms + ".", 1e-5)
    q, k, v = F.linear(y, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).chunk(3, -1)
    x = x + F.linear(attention(q, k, v, heads), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
    h = F.gelu(F.linear(ln(x, s, p + "norm2" + norms + ".", 1e-5), s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
    return x + F.linear(h, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])


def cm_reference(s, x, m):
    """CAV-MAE's forward_audio (m = 'a', x = fbank [1024, 128]) / forward_video (m = 'v', x = images)."""
    if m == "a":
        x = x.T[None, None]  # [1, 1, 128, 1024]
    x = F.conv2d(x, s[f"patch_embed_{m}.proj.weight"], s[f"patch_embed_{m}.proj.bias"], stride=16)
    grid = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2) + s[f"pos_embed_{m}"] + s[f"modality_{m}"]
    for i in range(CM["sizes"]["tiny"]["L" + m.upper()]):
        x = cm_block(x, s, f"blocks_{m}.{i}.", "")
    for i in range(CM["sizes"]["tiny"]["LU"]):
        x = cm_block(x, s, f"blocks_u.{i}.", "_" + m)
    x = ln(x, s, f"norm_{m}.", 1e-5)
    return x.reshape(len(x), *grid, -1).permute(0, 3, 1, 2)  # [B, D, rows, columns]


def reference_token_mask(valid: int, tokens: int) -> torch.Tensor:
    """DenseAV's interpolate_mask of a mask whose first ``valid`` of 164,200 samples are set, by hand:
    the value at each token centre (half-pixel convention), linear between samples, > 0.01."""
    x = np.clip((np.arange(tokens) + 0.5) * CLIP / tokens - 0.5, 0, CLIP - 1)
    i0 = np.floor(x).astype(int)
    w = x - i0
    mask = lambda i: (i < valid).astype(float)  # noqa: E731
    return torch.from_numpy((1 - w) * mask(i0) + w * mask(np.minimum(i0 + 1, CLIP - 1)) > 0.01)


def reference_heatmap(a_tokens, v_tokens, token_mask):
    """DenseAV's get_paired_heatmaps: raw dot product [h, w, F, T], mean over F, masked mean over T."""
    sims = torch.einsum("cft,chw->hwft", a_tokens, v_tokens).mean(2)
    return (sims * token_mask).sum(-1) / token_mask.sum()


def inputs(n=2, seed=0):
    r = np.random.default_rng(seed)
    images = torch.from_numpy(r.standard_normal((n, 3, 224, 224)).astype(np.float32))
    valid = [160_000, 3 * 16_000][:n]
    clips = [np.zeros(160_000, np.float32) for _ in range(n)]
    for clip, length in zip(clips, valid):
        clip[:length] = 0.1 * r.standard_normal(length)
    return images, clips, valid


def encode(model, images, clips, valid):
    runner = ModelRunner(model, torch.device("cpu"), batch_size=4)
    wave = torch.from_numpy(np.stack(clips))
    mask = torch.arange(wave.shape[1])[None] < torch.tensor(valid)[:, None]
    with torch.no_grad():
        v = model.encode_image(images)
        a, frame_mask = model.encode_audio(wave, mask)
    return runner, a, frame_mask, v


# --------------------------------------------------------------------------- the layouts


def test_real_size_modules_have_the_release_layout():
    """The real-size modules, built on the meta device, have exactly the manifest's keys and shapes."""
    s = IB["sizes"]["huge"]
    sizes = dict(
        vision_dim=s["V"],
        vision_depth=s["VL"],
        vision_heads=IB["facts"]["vision_heads"],
        vision_mlp=s["VM"],
        audio_dim=s["A"],
        audio_depth=s["AL"],
        audio_heads=IB["facts"]["audio_heads"],
        audio_mlp=s["AM"],
        out_dim=s["O"],
    )
    with torch.device("meta"):
        ib = ImageBindModel(BaselineConfig("imagebind", sizes))
    state = {k: tuple(v.shape) for k, v in ib.state_dict().items()}
    assert state == expand(IB["keys"], s)
    counts = IB["counts"]["huge"]
    assert len(state) == counts["vision_and_audio"] == counts["vision"] + counts["audio"] == 569
    parameters = sum(v.numel() for v in ib.state_dict().values()) / 1e6
    assert parameters == pytest.approx(counts["vision_and_audio_parameters_M"], abs=0.05)
    assert sum(k.split(".")[1] == "vision" for k in state) == counts["vision"]

    s = CM["sizes"]["release"]
    with torch.device("meta"):
        cm = CAVMAEModel(
            BaselineConfig(
                "cavmae",
                dict(
                    dim=s["D"],
                    depth_a=s["LA"],
                    depth_v=s["LV"],
                    depth_u=s["LU"],
                    heads=CM["facts"]["heads"],
                    mlp=s["M"],
                ),
            )
        )
    state = {k: tuple(v.shape) for k, v in cm.state_dict().items()}
    decoder = expand(CM["decoder_keys"], s)
    assert state == expand(CM["keys"], s)
    counts = CM["counts"]["release"]
    assert (len(state), len(decoder), len(state) + len(decoder)) == (counts["encoder"], counts["decoder"], 647)
    total = sum(v.numel() for v in cm.state_dict().values()) + sum(math.prod(v) for v in decoder.values())
    assert total / 1e6 == pytest.approx(counts["whole_file_parameters_M"], abs=0.01)


# --------------------------------------------------------------------------- outputs against the references


def test_imagebind_release_file_gives_denseavs_features_maps_and_scores(imagebind_file):
    model, desc = load_any(imagebind_file)
    state = {k: v for k, v in imagebind_state().items()}
    layout = expand(IB["keys"], IB["sizes"]["tiny"])
    assert desc["kind"] == "imagebind" and desc["num_heads"] == 1 and desc["config"]["num_heads"] == 1
    assert desc["weights"] == {"loaded": len(layout), "ignored_other_modalities": len(IB["ignored_examples"])}
    for key, value in model.state_dict().items():  # converter round trip: the file's tensors, unchanged
        assert torch.equal(value, state[key]), key

    images, clips, valid = inputs()
    runner, a, frame_mask, v = encode(model, images, clips, valid)
    o = IB["sizes"]["tiny"]["O"]
    ref_v, ref_vcls = ib_reference_image(state, images)
    torch.testing.assert_close(v[:, :o, 0].permute(0, 2, 3, 1), ref_v, rtol=1e-4, atol=1e-5)
    assert a.shape[-2:] == (12, 93) and frame_mask.shape == (2, 93)  # 95 tokens, those past 10 s dropped
    refs = [ib_reference_audio(state, clip[:n]) for clip, n in zip(clips, valid)]
    for i, (tokens, _) in enumerate(refs):
        torch.testing.assert_close(a[i, :o, 0], tokens[..., :93], rtol=1e-4, atol=1e-4)
        assert torch.equal(frame_mask[i], reference_token_mask(valid[i], 95)[:93])

    maps, fallback = runner.pair_heatmaps(a, frame_mask, v, "max")
    for i, (tokens, _) in enumerate(refs):
        ref = reference_heatmap(tokens, ref_v[i].permute(2, 0, 1), reference_token_mask(valid[i], 95).float())
        torch.testing.assert_close(torch.from_numpy(maps[i]), ref, rtol=1e-4, atol=1e-4)
    scores = runner.score_matrices(a, frame_mask, v)
    ref_scores = torch.stack([cls for _, cls in refs]) @ ref_vcls.T  # CLS . CLS
    assert scores.shape == (1, 2, 2) and fallback == 0
    torch.testing.assert_close(torch.from_numpy(scores[0]), ref_scores, rtol=1e-4, atol=1e-4)
    assert abs(float(refs[0][1].norm()) - 20) < 1  # a mean of five vectors of norm 20


def test_cavmae_release_file_gives_denseavs_features_maps_and_scores(cavmae_file):
    model, desc = load_any(cavmae_file)
    state = {k[len("module.") :]: v for k, v in cavmae_state().items()}
    decoder = expand(CM["decoder_keys"], CM["sizes"]["tiny"])
    assert desc["kind"] == "cavmae" and desc["config"]["num_heads"] == 1
    assert desc["weights"] == {
        "loaded": len(state) - len(decoder),
        "dropped_decoder": len(decoder),
        "prefix": "module.",
    }
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key

    images, clips, valid = inputs(seed=1)
    runner, a, frame_mask, v = encode(model, images, clips, valid)
    d = CM["sizes"]["tiny"]["D"]
    ref_v = cm_reference(state, images, "v")
    torch.testing.assert_close(v[:, :d, 0], ref_v, rtol=1e-4, atol=1e-4)
    refs = [cm_reference(state, reference_fbank(clip[:n], -5.081, 4.4849), "a")[0] for clip, n in zip(clips, valid)]
    assert a.shape[-2:] == (8, 63)
    for i, tokens in enumerate(refs):
        torch.testing.assert_close(a[i, :d, 0], tokens[..., :63], rtol=1e-4, atol=1e-4)
        assert torch.equal(frame_mask[i], reference_token_mask(valid[i], 64)[:63])
    assert frame_mask[1].sum() == 19  # 3 s of 10.26 s

    maps, _ = runner.pair_heatmaps(a, frame_mask, v, 0)
    for i, tokens in enumerate(refs):
        ref = reference_heatmap(tokens, ref_v[i], reference_token_mask(valid[i], 64).float())
        torch.testing.assert_close(torch.from_numpy(maps[i]), ref, rtol=1e-4, atol=1e-4)
    pooled_a = F.normalize(torch.stack([t.mean((1, 2)) for t in refs]), dim=1)  # every token, padding included
    pooled_v = F.normalize(ref_v.mean((2, 3)), dim=1)
    torch.testing.assert_close(
        torch.from_numpy(runner.score_matrices(a, frame_mask, v)[0]), pooled_a @ pooled_v.T, rtol=1e-4, atol=1e-5
    )


def test_fbank_is_torchaudios_and_long_audio_goes_in_windows():
    r = np.random.default_rng(3)
    clip = (0.1 * r.standard_normal(200_000)).astype(np.float32)
    wave = torch.from_numpy(clip)[None]
    windows, masks = fbank.windows(wave, torch.ones_like(wave, dtype=torch.bool))
    assert windows.shape == (1, 2, CLIP) and int(masks.sum()) == 200_000
    spec = fbank.normalized_fbank(windows[0], "imagebind")
    assert spec.shape == (2, 1024, 128)
    torch.testing.assert_close(spec[0], reference_fbank(clip[:CLIP], -4.268, 9.138), rtol=0, atol=0)
    torch.testing.assert_close(spec[1], reference_fbank(clip[CLIP:], -4.268, 9.138), rtol=0, atol=0)


def test_a_safetensors_copy_loads_the_same(imagebind_file, tmp_path):
    state = torch.load(imagebind_file, weights_only=True)
    copy = save(state, tmp_path / "weights.safetensors")  # recognized by its keys, not its name
    model, desc = load_any(copy)
    assert desc["kind"] == "imagebind"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- broken files


def _broken(kind: str, tmp_path: Path) -> tuple[Path, str]:
    if kind == "missing":
        state = imagebind_state()
        del state["modality_heads.audio.2.weight"]
        return save(state, tmp_path / "ib.pth"), "1 missing: modality_heads.audio.2.weight"
    if kind == "unexpected":
        state = cavmae_state()
        state["module.mlp_head.1.weight"] = torch.zeros(3, 128)
        return save(state, tmp_path / "cav.pth"), "fine-tuned CAV-MAE"
    if kind == "shape":
        state = imagebind_state()
        state["modality_preprocessors.vision.pos_embedding_helper.pos_embed"] = torch.zeros(1, 197, 160)
        return save(state, tmp_path / "ib.pth"), "of another shape"
    if kind == "nan":
        state = cavmae_state()
        state["module.blocks_v.0.attn.qkv.weight"][0, 0] = float("nan")
        return save(state, tmp_path / "cav.pth"), "module.blocks_v.0.attn.qkv.weight holds 1 NaN or infinite values"
    if kind == "integer":  # a quantized copy
        state = imagebind_state()
        state["modality_heads.vision.2.weight"] = state["modality_heads.vision.2.weight"].to(torch.int8)
        return save(state, tmp_path / "ib.pth"), "modality_heads.vision.2.weight is int8, not floating point"
    if kind == "pickle":
        path = tmp_path / "imagebind_huge.pth"
        torch.save({"weights": Path("x")}, path)  # loading it would run pathlib's code
        return path, "needs unpickling (it holds pathlib.PosixPath)"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape", "nan", "integer", "pickle"])
def test_a_file_that_does_not_fit_is_one_line_naming_it(kind, tmp_path):
    path, words = _broken(kind, tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_any(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


def test_cli_refuses_truncated_and_garbage_files_in_one_line(imagebind_file, tmp_path):
    from evaluate import app as evaluate_app
    from ground.cli import app as ground_app
    from tests.support import media

    cut = tmp_path / "imagebind_huge.pth"
    cut.write_bytes(imagebind_file.read_bytes()[: imagebind_file.stat().st_size // 2])
    out = tmp_path / "out"
    result = RUN.invoke(
        evaluate_app,
        ["--checkpoint", str(cut), "--no-progress", "--out", str(out), "table3", "--places", str(tmp_path)],
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {cut}: not a readable torch weights file, truncated or damaged")

    garbage = media.write_garbage(tmp_path / "audio_model.21.pth")
    image = media.write_image(tmp_path / "x.png", size=(64, 48))
    sound = media.write_audio(tmp_path / "x.wav", media.noise(1.0), 16_000)
    result = RUN.invoke(
        ground_app,
        [
            "--checkpoint",
            str(garbage),
            "--out",
            str(out),
            "--no-progress",
            "--image",
            str(image),
            "--audio",
            str(sound),
        ],
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and f"{garbage}: not a torch weights file" in lines[0]


# --------------------------------------------------------------------------- the commands


def test_ground_runs_the_baselines(cavmae_file, tmp_path):
    """`ground` on a baseline file: one map (``evaluate.py all`` on both baselines, every table, is
    tests/evaluation/test_compare.py's four-row comparison)."""
    from ground.cli import app as ground_app
    from tests.support import media

    image = media.write_image(tmp_path / "scene.png", size=(200, 120))
    sound = media.write_audio(tmp_path / "drum.wav", media.noise(2.0, 22_050), 22_050)
    result = RUN.invoke(
        ground_app,
        [
            "--checkpoint",
            str(cavmae_file),
            "--out",
            str(tmp_path / "g"),
            "--no-progress",
            "--image",
            str(image),
            "--audio",
            str(sound),
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((tmp_path / "g" / "result.json").read_text())
    assert set(summary["heads"]) == {"audio", "total"} and summary["model"]["kind"] == "cavmae"
    assert summary["times_s"][-1] < 2.0


def test_audio_longer_than_a_window_is_encoded_window_by_window(cavmae_file):
    """ground takes up to 30 s: consecutive 164,200-sample windows, each as DenseAV prepares its one."""
    model, _ = load_any(cavmae_file)
    wave = torch.from_numpy((0.1 * np.random.default_rng(4).standard_normal((1, 200_000))).astype(np.float32))
    with torch.no_grad():
        a, frame_mask = model.encode_audio(wave, torch.ones_like(wave, dtype=torch.bool))
        first, _ = model.encode_audio(wave[:, :CLIP], torch.ones(1, CLIP, dtype=torch.bool))
    assert a.shape[-1] == math.ceil(200_000 * 64 / CLIP) == 78 and bool(frame_mask.all())
    d = CM["sizes"]["tiny"]["D"]
    torch.testing.assert_close(a[:, :d, :, :, :64], first[:, :d], rtol=1e-5, atol=1e-5)
