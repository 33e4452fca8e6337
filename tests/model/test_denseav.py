"""DenseAV's checkpoint format: tiny DenseAV-layout files built from the committed key manifest
(tests/model/fixtures/denseav_keys.json), read by the converter, and checked against a reference
computation of DenseAV's DINO, aligners and "misa" aggregation written here in plain torch."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from evaluation.runner import ModelRunner
from model.checkpoint import CheckpointError
from model.denseav_convert import convert
from model.loading import load_any, probe_inputs

MANIFEST = json.loads((Path(__file__).parent / "fixtures" / "denseav_keys.json").read_text())
SIZES = MANIFEST["sizes"]["tiny"]
STYLES = {
    "peft05": {"{qkv}": "qkv", "{weight_g}": "weight_g", "{weight_v}": "weight_v"},
    "peft07": {
        "{qkv}": "qkv.base_layer",
        "{weight_g}": "parametrizations.weight.original0",
        "{weight_v}": "parametrizations.weight.original1",
    },
}
CLIP = 164_200


# --------------------------------------------------------------------------- building files


def dim(formula: str, sizes: dict) -> int:
    """A shape formula of the manifest: sums of products/quotients of sizes and integers."""

    def factor(f):
        return int(f) if f.isdigit() else sizes[f]

    total = 0
    for term in formula.split("+"):
        value = 1
        for part in term.split("*"):
            num, *den = part.split("/")
            value *= factor(num) // math.prod(factor(d) for d in den) if den else factor(num)
        total += value
    return total


def manifest_keys(style: str, sizes: dict = SIZES) -> dict[str, tuple[int, ...]]:
    out = {}
    for entry in MANIFEST["keys"]:
        key = entry["key"]
        for old, new in STYLES[style].items():
            key = key.replace(old, new)
        shape = tuple(dim(f, sizes) for f in entry["shape"])
        if "for" in entry:
            var, bound = entry["for"].split("<")
            for i in range(sizes[bound]):
                out[key.replace("{" + var + "}", str(i))] = shape
        else:
            out[key] = shape
    return out


def random_state(style: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in manifest_keys(style).items():
        t = torch.randn(shape, generator=g)
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm.norm.weight")):
            t = 1 + 0.1 * t
        elif key.endswith(("weight_g", "original0")):
            t = 1 + 0.1 * t.abs()
        elif key in ("sim_cal.w",):
            t = torch.tensor([math.log(3.0)])
        elif "lora_B" in key or "lora_A" in key:
            t = 0.05 * t
        else:
            t = 0.1 * t if t.dim() > 1 else 0.02 * t
        state[key] = t
    return state


def write(state: dict, path: Path, kind: str, hparams: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "ckpt":
        torch.save(
            {
                "state_dict": state,
                "epoch": 1,
                "global_step": 10,
                "pytorch-lightning_version": "1.9.5",
                "hyper_parameters": hparams or {},
            },
            path,
        )
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        if hparams is not None:
            (path.parent / "config.json").write_text(json.dumps(hparams))
    return path


HPARAMS = {
    "code_dim": SIZES["C"],
    "sim_agg_heads": 2,
    "sim_use_cls": False,
    "mask_silence": True,
    "nonneg_sim": False,
    "head_agg": "max_elementwise",
    "sim_agg_type": "misa",
}


# --------------------------------------------------------------------------- reference (DenseAV's equations)


def ln(x, state, prefix, eps=1e-4):
    return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"], eps)


def block(x, s, p, heads=6):
    """DINO's Block: pre-norm attention (qkv split q|k|v, 6 heads) and GELU MLP, LayerNorm eps 1e-4."""
    b, n, d = x.shape
    qkv = F.linear(ln(x, s, p + "norm1."), s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    att = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
    x = x + F.linear((att @ v).transpose(1, 2).reshape(b, n, d), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
    h = F.gelu(F.linear(ln(x, s, p + "norm2."), s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
    return x + F.linear(h, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])


def merged_vit(state: dict, style: str) -> dict:
    """DINO weights with LoRA folded in by hand: W + (32 / r) B A."""
    pre = "image_model.base_model.model.model."
    vit = {}
    for key, value in state.items():
        if key.startswith(pre) and ".lora_" not in key:
            vit[key[len(pre) :].replace("qkv.base_layer.", "qkv.")] = value.clone()
    for i in range(SIZES["VL"]):
        a = state[f"{pre}blocks.{i}.attn.qkv.lora_A.default.weight"]
        b = state[f"{pre}blocks.{i}.attn.qkv.lora_B.default.weight"]
        vit[f"blocks.{i}.attn.qkv.weight"] += 32.0 / SIZES["R"] * b @ a
    return vit


def reference_image(state, style, images, heads):
    vit = merged_vit(state, style)
    b = images.shape[0]
    x = F.conv2d(images, vit["patch_embed.proj.weight"], vit["patch_embed.proj.bias"], stride=SIZES["P"])
    h, w = x.shape[-2:]
    x = torch.cat([vit["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], 1) + vit["pos_embed"]
    for i in range(SIZES["VL"]):
        x = block(x, vit, f"blocks.{i}.", heads=max(1, SIZES["D"] // 64))
    x = ln(x, vit, "norm.", 1e-4)
    patches = x[:, 1:]  # [B, hw, D]
    y = F.linear(
        ln(patches, state, "image_aligner.norm.norm."),
        state["image_aligner.layer.weight"][:, :, 0, 0],
        state["image_aligner.layer.bias"],
    )
    return y.transpose(1, 2).reshape(b, heads, -1, h, w)  # [B, K, C/K, h, w]


def reference_audio(state, hubert, wave, mask, heads):
    """DenseAV's audio path after HuBERT (``hubert``: the converted backbone, run on DenseAV's input)."""
    pad = CLIP - wave.shape[1]
    x = F.pad(wave * mask, (0, pad))
    m = F.pad(mask.float(), (0, pad))
    x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)
    hid = hubert(input_values=x).last_hidden_state  # [B, T, A]
    feats = ln(hid, state, "audio_aligner.mod_list.1.norm.").transpose(1, 2).unsqueeze(2)
    cls = F.linear(
        ln(state["audio_cls"], state, "audio_aligner.mod_list.1.norm."),
        state["audio_aligner.mod_list.2.cls_layer.weight"],
        state["audio_aligner.mod_list.2.cls_layer.bias"],
    )
    feats = F.conv2d(
        feats,
        state["audio_aligner.mod_list.2.layer.weight"],
        state["audio_aligner.mod_list.2.layer.bias"],
        stride=(1, 3),
    )
    feats = F.conv2d(
        feats,
        state["audio_aligner.mod_list.3.layer.weight"],
        state["audio_aligner.mod_list.3.layer.bias"],
        stride=(1, 3),
    )
    b, c, _, t = feats.shape
    padding = SIZES["CP"] - c
    tokens = torch.cat([cls.expand(b, 1, -1), feats[:, :, 0].transpose(1, 2)], 1)
    tokens = block(F.pad(tokens, (padding, 0)), state, "audio_aligner.mod_list.4.block.")[..., padding:]
    a = tokens[:, 1:].transpose(1, 2).reshape(b, heads, c // heads, 1, t)  # [B, K, C/K, F, T]
    frame_mask = F.interpolate(m.reshape(b, 1, 1, -1), (1, t), mode="bilinear").reshape(b, t) > 0.01
    return a, frame_mask


def misa_scores(a, mask, v):
    """DenseAV's "misa" per head: max over h, w; mean over f; masked mean over t -> [Na, Nv, K]."""
    sims = torch.einsum("akcft,vkchw->avkhwft", a, v)
    sims = sims.amax(3).amax(3).mean(3)  # [Na, Nv, K, T]
    w = mask.float()[:, None, None, :]
    return (sims * w).sum(-1) / w.sum(-1).clamp_min(0.001)


def paired_heatmaps(a, mask, v):
    """DenseAV's paired heatmap: volume x mask, max over heads, mean over f, masked mean over t."""
    sims = torch.einsum("bkcft,bkchw,bt->bkhwft", a, v, mask.float()).amax(1).mean(-2)  # [B, h, w, T]
    return torch.einsum("bhwt,bt->bhw", sims, mask.float()) / mask.float().sum(-1).reshape(-1, 1, 1)


# --------------------------------------------------------------------------- tests


def inputs(seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    size = SIZES["G"] * SIZES["P"]
    images = torch.randn(n, 3, size, size, generator=g)
    lengths = [160_000, 90_000, 40_000][:n]
    wave = torch.randn(n, 160_000, generator=g) * 0.1
    mask = torch.arange(160_000)[None, :] < torch.tensor(lengths)[:, None]
    return images, wave * mask, mask


@pytest.mark.parametrize("style", ["peft05", "peft07"])
@pytest.mark.parametrize("kind", ["ckpt", "safetensors"])
def test_converted_model_equals_denseav_reference(tmp_path, style, kind):
    state = random_state(style)
    path = write(state, tmp_path / ("denseav.ckpt" if kind == "ckpt" else "hf/model.safetensors"), kind, HPARAMS)
    model, info = convert(path)
    assert info["lora"] == ("peft 0.5 (qkv.weight)" if style == "peft05" else "peft >= 0.7 (base_layer)")
    assert model.config.num_heads == 2 and model.config.image_size == 32
    images, wave, mask = inputs()
    with torch.no_grad():
        v = model.encode_image(images)
        a, frame_mask = model.encode_audio(wave, mask)
        ref_v = reference_image(state, style, images, 2)
        ref_a, ref_mask = reference_audio(state, model.audio_backbone, wave, mask, 2)
    # this project's layout [B, C, K, ...] against DenseAV's [B, K, C, ...]; DenseAV's 56th frame
    # lies in the padding past the 10 s clip, masked silence that the model does not return
    assert ref_mask.shape == (3, 56) and not ref_mask[:, 55:].any()
    ref_a, ref_mask = ref_a[..., :55], ref_mask[:, :55]
    torch.testing.assert_close(v, ref_v.transpose(1, 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a, ref_a.transpose(1, 2), atol=1e-4, rtol=1e-4)
    assert torch.equal(frame_mask, ref_mask) and frame_mask.shape == (3, 55)
    assert not frame_mask[2].all() and frame_mask[2].any()  # the short clip's padding is masked
    # the evaluation code's scores and heatmaps are DenseAV's misa aggregation
    runner = ModelRunner(model, torch.device("cpu"))
    per_head = runner.score_matrices(a, frame_mask, v)  # [K, Na, Nv]
    misa = misa_scores(ref_a, ref_mask, ref_v)
    np.testing.assert_allclose(per_head, misa.permute(2, 0, 1).numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(per_head.sum(0), misa.sum(-1).numpy(), atol=1e-4, rtol=1e-4)  # retrieval total
    maps, _ = runner.pair_heatmaps(a, frame_mask, v, "max")
    np.testing.assert_allclose(maps, paired_heatmaps(ref_a, ref_mask, ref_v).numpy(), atol=1e-4, rtol=1e-4)
    assert float(model.logit_scale().detach()) == pytest.approx(3.0)


def test_backbone_weights_are_merged_and_renamed(tmp_path):
    state = random_state("peft05")
    model, _ = convert(write(state, tmp_path / "denseav_2head.ckpt", "ckpt"))  # heads from the file name
    own = model.state_dict()
    vit = merged_vit(state, "peft05")
    torch.testing.assert_close(own["image_backbone.blocks.1.qkv.weight"], vit["blocks.1.attn.qkv.weight"])
    pre = "audio_model.model.encoder.pos_conv_embed.conv."
    hubert = {k: v for k, v in own.items() if "pos_conv_embed" in k}
    assert any(torch.equal(v, state[pre + "weight_v"]) for v in hubert.values())
    assert any(torch.equal(v, state[pre + "weight_g"]) for v in hubert.values())
    assert model.config.num_heads == 2


def test_single_head_model_and_cls_term(tmp_path):
    state = random_state("peft07")
    path = write(
        state, tmp_path / "denseav_language.ckpt", "ckpt", {**HPARAMS, "sim_agg_heads": 1, "sim_use_cls": True}
    )
    model, desc = load_any(path)
    assert model.config.num_heads == 1 and desc["head_assignment"] == "single head"
    images, wave, mask = inputs(n=2)
    with torch.no_grad():
        v, (a, m) = model.encode_image(images), model.encode_audio(wave, mask)
        _, icls = model.image_backbone(images)
        image_cls = F.linear(icls, state["image_aligner.cls_layer.weight"], state["image_aligner.cls_layer.bias"])
        ref_v = reference_image(state, "peft07", images, 1)
        ref_a, ref_mask = reference_audio(state, model.audio_backbone, wave, mask, 1)
        # the audio CLS is the first token of the attention block's output
        x, _ = model.prepare_audio(wave, mask)
        audio_cls = _audio_cls(model, state, x)
    runner = ModelRunner(model, torch.device("cpu"))
    cls_term = audio_cls @ image_cls.T  # DenseAV adds it to every cell of the volume
    expected = misa_scores(ref_a, ref_mask, ref_v)[..., 0] + cls_term
    np.testing.assert_allclose(runner.score_matrices(a, m, v)[0], expected.numpy(), atol=1e-4, rtol=1e-4)


def _audio_cls(model, state, x):
    hid = model.audio_backbone(input_values=x).last_hidden_state
    feats = ln(hid, state, "audio_aligner.mod_list.1.norm.").transpose(1, 2).unsqueeze(2)
    feats = F.conv2d(
        feats,
        state["audio_aligner.mod_list.2.layer.weight"],
        state["audio_aligner.mod_list.2.layer.bias"],
        stride=(1, 3),
    )
    feats = F.conv2d(
        feats,
        state["audio_aligner.mod_list.3.layer.weight"],
        state["audio_aligner.mod_list.3.layer.bias"],
        stride=(1, 3),
    )
    cls = F.linear(
        ln(state["audio_cls"], state, "audio_aligner.mod_list.1.norm."),
        state["audio_aligner.mod_list.2.cls_layer.weight"],
        state["audio_aligner.mod_list.2.cls_layer.bias"],
    )
    tokens = torch.cat([cls.expand(x.shape[0], 1, -1), feats[:, :, 0].transpose(1, 2)], 1)
    padding = SIZES["CP"] - SIZES["C"]
    return block(F.pad(tokens, (padding, 0)), state, "audio_aligner.mod_list.4.block.")[:, 0, padding:]


class LightningThing:  # stands for any class a pickled checkpoint may name
    def __init__(self):
        self.lr = 1e-4


def test_checkpoint_needing_unpickling_is_refused_with_one_line(tmp_path):
    path = tmp_path / "denseav_2head.ckpt"
    torch.save({"state_dict": random_state("peft05"), "hyper_parameters": LightningThing()}, path)
    with pytest.raises(CheckpointError) as err:
        load_any(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "needs unpickling" in message
    assert "LightningThing" in message and "safetensors" in message and "DenseAV-" in message


@pytest.mark.parametrize(
    "case", ["truncated", "not_denseav", "no_heads", "misfit", "lora_without_b", "no_tensors", "missing"]
)
def test_hostile_denseav_files(tmp_path, case):
    state = random_state("peft05")
    if case == "misfit":
        state["audio_aligner.mod_list.3.layer.weight"] = torch.zeros(3, 3, 1, 3)
        path, expected = write(state, tmp_path / "denseav_2head.ckpt", "ckpt"), "do not fit DenseAV's layout"
    elif case == "lora_without_b":
        del state["image_model.base_model.model.model.blocks.0.attn.qkv.lora_B.default.weight"]
        path, expected = write(state, tmp_path / "denseav_2head.ckpt", "ckpt"), "lora_A without lora_B"
    elif case == "no_tensors":
        path = tmp_path / "denseav_2head.ckpt"
        torch.save({"state_dict": [1, 2, 3]}, path)
        expected = "holds no state_dict of tensors"
    elif case == "missing":
        path, expected = tmp_path / "denseav_2head.ckpt", "no such checkpoint file or directory"
    elif case == "truncated":
        path = write(state, tmp_path / "denseav_2head.ckpt", "ckpt")
        path.write_bytes(path.read_bytes()[:1000])
        expected = "not a readable torch checkpoint"
    elif case == "not_denseav":
        path = write({"weight": torch.zeros(3)}, tmp_path / "denseav_2head.safetensors", "safetensors")
        expected = "not a DenseAV checkpoint"
    else:
        path = write(state, tmp_path / "weights.safetensors", "safetensors")
        expected = "pass --num-heads to ground or evaluate.py"
    with pytest.raises(CheckpointError) as err:
        load_any(path)
    assert "\n" not in str(err.value) and expected in str(err.value) and str(path) in str(err.value)


# --------------------------------------------------------------------------- which head is speech


def _head_discriminating_state(tmp_path, speech_head: int) -> dict:
    """Image features constant per head (1x1 conv weight 0, bias u_k): head ``speech_head``'s u is the
    speech-minus-sound mean of its audio features on the probe clips, the other head's the opposite,
    so one head answers speech-like input and the other sound-like input."""
    state = random_state("peft05", seed=3)
    model, _ = convert(write(state, tmp_path / "base" / "denseav_2head.ckpt", "ckpt"))
    speech, sound, _ = probe_inputs(model.config.image_size)

    def mean_features(clips):
        with torch.no_grad():
            feats = [
                model.encode_audio(torch.from_numpy(c)[None], torch.ones(1, len(c), dtype=torch.bool))[0] for c in clips
            ]
        return torch.stack([f.mean((0, 3, 4)) for f in feats]).mean(0)  # [C, K]

    diff = mean_features(speech) - mean_features(sound)
    u = torch.stack([diff[:, k] if k == speech_head else -diff[:, k] for k in range(2)])  # [K, C], head-major
    state["image_aligner.layer.weight"] = torch.zeros_like(state["image_aligner.layer.weight"])
    state["image_aligner.layer.bias"] = u.reshape(-1) * 10
    return state


@pytest.mark.parametrize("speech_head", [0, 1])
def test_speech_head_is_picked_from_activations_and_override_wins(tmp_path, speech_head):
    path = write(_head_discriminating_state(tmp_path, speech_head), tmp_path / "denseav_2head.ckpt", "ckpt")
    model, desc = load_any(path)
    found = desc["head_assignment"]
    assert model.config.speech_head == speech_head and model.config.sound_head == 1 - speech_head
    assert found["speech_head"] == speech_head and found["pred_dis"] > 0.5
    assert found["ap"][f"head{speech_head}"]["speech"] > found["ap"][f"head{1 - speech_head}"]["speech"]
    model, desc = load_any(path, speech_head=1 - speech_head)
    assert model.config.speech_head == 1 - speech_head and desc["head_assignment"] == "given (speech_head)"


def test_manifest_matches_denseav_paper_sizes():
    """The manifest's real sizes give DenseAV's published parameter counts' building blocks."""
    keys = manifest_keys("peft05", MANIFEST["sizes"]["denseav"])
    pre = "image_model.base_model.model.model."
    assert keys[pre + "pos_embed"] == (1, 785, 384)  # 28 x 28 patches at 224 px, ViT-S/8
    assert keys["audio_aligner.mod_list.2.layer.weight"] == (384, 1024, 1, 3)
    assert keys["audio_model.model.encoder.pos_conv_embed.conv.weight_v"] == (1024, 64, 128)
    assert sum(k.startswith("audio_model.model.encoder.layers.") for k in keys) == 24 * 16
