"""Reading ImageBind's and CAV-MAE's released weight files into ``model.baselines``' models.

Accepted: the releases as they are downloaded, torch files holding a plain state dict
(``imagebind_huge.pth``; CAV-MAE's ``audio_model.21.pth`` and the other cav-mae pretraining files,
saved through ``torch.nn.DataParallel`` so every key starts with ``module.``), read with
``torch.load(weights_only=True)`` only, and the same state dicts as safetensors. Anything that
needs unpickling is refused.

Only the towers used are read: a zip-format torch file is memory-mapped (``mmap=True``) and a
safetensors file opened lazily, so ImageBind's text, depth, thermal and IMU weights (about 480 M of
its 1.2 B parameters) are never loaded, and the kept tensors become the model's parameters without
a copy (the model is built on the meta device, then the file's tensors are assigned). A torch file
in the legacy (non-zip) format cannot be mapped and is read whole.

Key checks are strict and by name: ImageBind's ``modality_*.{vision,audio}.*`` keys must be exactly
the model's (569 for imagebind_huge), other modalities' keys are ignored by name (and counted),
anything else is unexpected; CAV-MAE's ``module.`` prefix is stripped, the MAE decoder
(``decoder_*``, ``mask_token``) dropped by name, and the rest must be exactly the encoder's keys
(474 of the release's 647). Sizes come from the shapes; what shapes cannot tell (head counts, the
input geometry) are the releases' facts, constants of the model modules. Every problem is one
``BaselineFormatError`` line naming the file.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint import CheckpointError, misfit, state_shapes, weight_problems
from .cavmae import HEAD_WIDTH as CAVMAE_HEAD_WIDTH
from .cavmae import CAVMAEModel
from .common import BaselineConfig, BaselineModel
from .imagebind import AUDIO_HEAD_WIDTH, VISION_HEAD_WIDTH, ImageBindModel

FAMILIES = {"imagebind": "ImageBind's imagebind_huge.pth", "cavmae": "CAV-MAE's pretraining files (audio_model.21.pth)"}
# A file that cannot be read is still recognized by a release's file name, so its error is this module's.
NAME_HINTS = {"imagebind": ("imagebind",), "cavmae": ("cav-mae", "cav_mae", "cavmae", "audio_model.")}
IMAGEBIND_GROUPS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")
IMAGEBIND_KEPT = ("vision", "audio")
IMAGEBIND_OTHERS = ("text", "depth", "thermal", "imu")
DATA_PARALLEL = "module."
CAVMAE_DECODER = ("decoder_", "mask_token")
SOURCES = {
    "imagebind": "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth (CC-BY-NC 4.0)",
    "cavmae": "the YuanGongND/cav-mae README's pretrained models (CAV-MAE-Scale++: audio_model.21.pth)",
}
PREPROCESSING = (
    "DenseAV evaluation: audio zero-padded to 164,200 samples (longer audio in consecutive "
    "windows of that length), Kaldi fbank 1024 x 128 normalized with {norm}; image shorter side "
    "to 224, centre crop, ImageNet normalization; {maps} maps; one similarity head"
)


class BaselineFormatError(CheckpointError):
    """A baseline weights file this converter cannot read; the message names the file and what to do."""

    def __init__(self, path: Path, message: str):
        ValueError.__init__(self, f"{path}: {message}")
        self.path = path


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, on one line."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unpickler_reason(exc: BaseException) -> str:
    """The line of torch's weights-only refusal that says what it found, else its first line."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        rest = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        if rest:
            return rest[0][:160]
    return _first_line(exc)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


class _Weights:
    """A weights file read lazily: its key names, each tensor's shape, a tensor on demand."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".safetensors":
            self._open_safetensors()
        else:
            self._open_torch()

    def _open_safetensors(self) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(self.path), framework="pt", device="cpu")
            self.keys = list(handle.keys())
            self.shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in self.keys}
        except (SafetensorError, OSError, ValueError) as exc:
            raise BaselineFormatError(
                self.path, f"not a readable safetensors file ({_first_line(exc)}); download it again"
            ) from exc
        self.get = handle.get_tensor

    def _open_torch(self) -> None:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols of damaged files: one line only
                warnings.simplefilter("ignore")
                data = torch.load(str(self.path), map_location="cpu", weights_only=True, mmap=_is_zip(self.path))
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if found:
                raise BaselineFormatError(
                    self.path,
                    f"needs unpickling (it holds {found.group(1)}), which this "
                    "loader never does; save its state_dict with torch.save or "
                    "safetensors",
                ) from exc
            raise BaselineFormatError(
                self.path, f"not a torch weights file ({_unpickler_reason(exc)}); download it again"
            ) from exc
        except (OSError, RuntimeError, EOFError, ValueError) as exc:
            raise BaselineFormatError(
                self.path,
                f"not a readable torch weights file, truncated or damaged ({_first_line(exc)}); download it again",
            ) from exc
        if isinstance(data, dict) and set(data) == {"state_dict"} and isinstance(data["state_dict"], dict):
            data = data["state_dict"]
        if not (isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values())):
            raise BaselineFormatError(self.path, "holds no state dict of tensors; point it at the release file")
        self.keys = [str(k) for k in data]
        self.shapes = state_shapes(data)
        self.get: Callable[[str], torch.Tensor] = data.__getitem__


def family_from_keys(keys: list[str]) -> str | None:
    """``"imagebind"``, ``"cavmae"`` or None from a state dict's key names."""
    if any(k.split(".", 1)[0] in IMAGEBIND_GROUPS for k in keys):
        return "imagebind"
    bare = {k[len(DATA_PARALLEL) :] if k.startswith(DATA_PARALLEL) else k for k in keys}
    if any(k.startswith(("blocks_a.", "patch_embed_a.")) or k == "modality_a" for k in bare):
        return "cavmae"
    return None


def baseline_family(path: str | Path) -> str | None:
    """Whether ``path`` is an ImageBind or CAV-MAE weights file (by its key names; by its file name
    when it cannot be read cheaply, so that its error comes from here); None otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    by_name = next((f for f, hints in NAME_HINTS.items() if any(h in path.name.lower() for h in hints)), None)
    try:
        if path.suffix != ".safetensors" and not _is_zip(path):
            return by_name  # legacy torch files cannot be mapped; reading one whole to look is too costly
        return family_from_keys(_Weights(path).keys) or None
    except (BaselineFormatError, OSError):  # unreadable: the loader the name points to reports it
        return by_name


def load_baseline(path: str | Path, family: str | None = None) -> tuple[BaselineModel, dict[str, Any]]:
    """The baseline model in ``path`` (eval mode, CPU, weights mapped from the file where it can be)
    and a description of what was read."""
    path = Path(path)
    if not path.is_file():
        raise BaselineFormatError(path, "no such file")
    family = family or baseline_family(path)
    if family not in FAMILIES:
        raise BaselineFormatError(
            path,
            "holds neither ImageBind's nor CAV-MAE's keys; point it at "
            "imagebind_huge.pth or a CAV-MAE pretraining file",
        )
    weights = _Weights(path)
    if family == "imagebind":
        names, ignored = _imagebind_names(weights.keys)
        sizes = _sizes(path, family, lambda: _imagebind_sizes(weights.shapes))
        model_class = ImageBindModel
    else:
        names, ignored = _cavmae_names(weights.keys)
        sizes = _sizes(path, family, lambda: _cavmae_sizes({k: weights.shapes[f] for k, f in names.items()}))
        model_class = CAVMAEModel
    config = BaselineConfig(family, sizes)
    with torch.device("meta"):
        model = model_class(config)
    _check(path, family, model, {k: weights.shapes[f] for k, f in names.items()})
    _assign(path, model, {k: weights.get(f) for k, f in names.items()}, names)
    desc = {
        "kind": family,
        "file": str(path),
        "num_heads": 1,
        "weights_source": SOURCES[family],
        "weights": {"loaded": len(names), **ignored},
        "sizes": sizes,
        "preprocessing": PREPROCESSING.format(
            norm="ImageBind's -4.268 / 9.138" if family == "imagebind" else "CAV-MAE's -5.081 / 4.4849",
            maps="16 x 16 image, 12 x 95 audio" if family == "imagebind" else "14 x 14 image, 8 x 64 audio",
        ),
        "retrieval": (
            "audio CLS . image CLS (ImageBindAggregator)"
            if family == "imagebind"
            else "cosine of mean-pooled tokens (CAVMAEAggregator)"
        ),
    }
    return model.eval(), desc


# --------------------------------------------------------------------------- names and sizes


def _imagebind_names(keys: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Model key -> file key for the vision and audio towers; counts of what is ignored by name."""
    names, others, unknown = {}, 0, []
    for key in keys:
        parts = key.split(".")
        modality = parts[1] if len(parts) > 2 and parts[0] in IMAGEBIND_GROUPS else None
        if modality in IMAGEBIND_KEPT:
            names[key] = key
        elif modality in IMAGEBIND_OTHERS:
            others += 1
        else:
            unknown.append(key)
    # unknown keys stay in the map under their own name, so the strict check reports them
    names.update({k: k for k in unknown})
    return names, {"ignored_other_modalities": others}


def _cavmae_names(keys: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    prefixed = bool(keys) and all(k.startswith(DATA_PARALLEL) for k in keys)
    names, decoder = {}, 0
    for key in keys:
        bare = key[len(DATA_PARALLEL) :] if prefixed else key
        if bare.startswith(CAVMAE_DECODER):
            decoder += 1
        else:
            names[bare] = key
    return names, {"dropped_decoder": decoder, "prefix": DATA_PARALLEL if prefixed else ""}


def _heads(dim: int, width: int) -> int:
    heads = max(1, dim // width)
    if dim % heads:
        raise ValueError(f"width {dim} does not split into heads of {width}")
    return heads


def _depth(shapes: dict[str, tuple], prefix: str) -> int:
    return len({k[len(prefix) :].split(".", 1)[0] for k in shapes if k.startswith(prefix)})


def _imagebind_sizes(shapes: dict[str, tuple]) -> dict[str, int]:
    vd = shapes["modality_preprocessors.vision.cls_token"][-1]
    ad = shapes["modality_preprocessors.audio.cls_token"][-1]
    return dict(
        vision_dim=vd,
        vision_depth=_depth(shapes, "modality_trunks.vision.blocks."),
        vision_heads=_heads(vd, VISION_HEAD_WIDTH),
        vision_mlp=shapes["modality_trunks.vision.blocks.0.mlp.fc1.weight"][0],
        audio_dim=ad,
        audio_depth=_depth(shapes, "modality_trunks.audio.blocks."),
        audio_heads=_heads(ad, AUDIO_HEAD_WIDTH),
        audio_mlp=shapes["modality_trunks.audio.blocks.0.mlp.fc1.weight"][0],
        out_dim=shapes["modality_heads.vision.2.weight"][0],
    )


def _cavmae_sizes(shapes: dict[str, tuple]) -> dict[str, int]:
    dim = shapes["modality_a"][-1]
    return dict(
        dim=dim,
        depth_a=_depth(shapes, "blocks_a."),
        depth_v=_depth(shapes, "blocks_v."),
        depth_u=_depth(shapes, "blocks_u."),
        heads=_heads(dim, CAVMAE_HEAD_WIDTH),
        mlp=shapes["blocks_u.0.mlp.fc1.weight"][0],
    )


def _sizes(path: Path, family: str, read: Callable[[], dict[str, int]]) -> dict[str, int]:
    try:
        return read()
    except (KeyError, IndexError, ValueError) as exc:
        what = f"no {exc.args[0]}" if isinstance(exc, KeyError) else _first_line(exc)
        raise BaselineFormatError(
            path, f"does not have the layout of {FAMILIES[family]} ({what}); use the release file as downloaded"
        ) from exc


# --------------------------------------------------------------------------- checking and loading


def _check(path: Path, family: str, model: torch.nn.Module, found: dict[str, tuple]) -> None:
    """Exactly the model's keys with the model's shapes, or one line saying the first differences
    (``model.checkpoint.misfit``, as for this project's checkpoints)."""
    own = state_shapes(model.state_dict())
    problem = misfit(own, found, against="model")
    if not problem:
        return
    hint = ""
    if any(k.startswith("mlp_head.") for k in set(found) - set(own)):
        hint = " (a fine-tuned CAV-MAE; DenseAV evaluates the pretrained model)"
    raise BaselineFormatError(
        path, f"does not have the layout of {FAMILIES[family]}{hint}: {problem}; use the release file as downloaded"
    )


def _assign(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor], names: dict[str, str]) -> None:
    """The file's tensors (``state``, by model key; ``names``: model key -> file key) become the
    model's parameters (float32; mapped, not copied, when they are float32 already); integer or
    non-finite weights are refused by their key in the file (``model.checkpoint.weight_problems``,
    the check of this project's checkpoints: every weight of these models is floating point)."""
    bad = weight_problems({names[key]: t for key, t in state.items()})
    if bad:
        (key, problem), others = bad[0], f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise BaselineFormatError(path, f"{key} {problem}{others}; download the file again")
    ready = {key: t if t.dtype == torch.float32 else t.float() for key, t in state.items()}
    model.load_state_dict(ready, strict=True, assign=True)
