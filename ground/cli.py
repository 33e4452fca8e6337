"""The ``ground`` command: a trained model on your own image (or video) and audio.

``ground --checkpoint CKPT --image x.jpg --audio y.wav [--audio z.wav ...] --out DIR`` writes
overlay PNGs per head and for the total (and all side by side, ``overlays.png``), ``heatmaps.mp4``
(the maps over time with the clip as sound) and ``result.json`` (``Grounding.summary``). Several
``--audio`` files are mixed at equal loudness, or grounded one by one into ``DIR/<name>/`` with
``--separate``. ``--video`` takes the middle frame (or, with ``--every-frame``, a frame per audio
frame) and the video's own sound. Bad input stops with one ``error: ...`` line naming the file
(exit 2): an ``--out`` that cannot be written is found before the model loads, a model whose maps
are not finite numbers writes nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import typer

from ground.serve import serve_command
from pipeline.cli_support import fail

app = typer.Typer(add_completion=False, no_args_is_help=False, help=__doc__.split("\n\n")[0])
ENCODE_BATCH = 8  # video frames through the image encoder at once


def parse_window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        fail(f"--window {text!r} is not START:END in seconds (e.g. 1.5:3)")
    if not end > start >= 0:
        fail(f"--window {text!r}: need 0 <= START < END")
    return start, end


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    checkpoint: Optional[str] = typer.Option(
        None,
        help="a checkpoint directory (train.py's final/), a DenseAV file, a baseline release file: "
        "ImageBind's imagebind_huge.pth or CAV-MAE's audio_model.21.pth (one head: one map), or a "
        "Hugging Face Hub repo id owner/name[@revision] (this project's or DenseAV's; HF_HUB_OFFLINE=1: "
        "the local cache only)",
    ),
    image: Optional[Path] = typer.Option(None, help="the picture"),
    audio: Optional[list[Path]] = typer.Option(None, help="an audio file; repeat to mix several"),
    out: Optional[Path] = typer.Option(None, help="folder for the overlays, heatmaps.mp4 and result.json"),
    separate: bool = typer.Option(False, help="ground each --audio on its own (DIR/<name>/) instead of their mixture"),
    video: Optional[Path] = typer.Option(None, help="a video: its middle frame and its own sound track"),
    every_frame: bool = typer.Option(False, help="with --video: a picture per audio frame (~0.18 s)"),
    window: Optional[str] = typer.Option(None, help="START:END seconds the mean maps average over"),
    speech_head: Optional[int] = typer.Option(None, help="which head is speech (the other is sound)"),
    num_heads: Optional[int] = typer.Option(
        None,
        min=1,
        help="heads of a DenseAV file that does not record them "
        "(2: denseav_2head / sound-language, 1: language or sound)",
    ),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    progress: bool = typer.Option(True, help="progress bars for videos"),
    scale: str = typer.Option(
        "shared",
        help="colours of the overlays and the MP4: shared (the heads on one min..max, the total on its own) "
        "or per-map (each map its own min..max)",
    ),
) -> None:
    """Ground an image (or video) against audio with a trained model."""
    if ctx.invoked_subcommand is not None:
        return
    spans = parse_window(window)
    _check_arguments(checkpoint, image, audio or [], out, video, every_frame)
    _check_writable(out)
    from ground.api import Grounder  # torch loads here, so `ground --help` stays instant
    from ground.inputs import GroundInputError
    from ground.render import SCALES
    from model.checkpoint import CheckpointError
    from pipeline.ffmpeg import FFmpegError

    if scale not in SCALES:
        fail(f"--scale {scale!r}: give one of {', '.join(SCALES)}")
    try:
        grounder = Grounder.from_checkpoint(checkpoint, device=device, speech_head=speech_head, num_heads=num_heads)
    except GroundInputError as exc:
        fail(str(exc))
    except (CheckpointError, ValueError, OSError) as exc:
        fail(f"cannot load --checkpoint {checkpoint}: {exc}")
    try:
        written = _ground_all(grounder, image, audio or [], out, separate, video, every_frame, spans, progress, scale)
    except GroundInputError as exc:
        fail(str(exc))
    except CheckpointError as exc:  # the model's features are not finite (model.checkpoint.NonFiniteOutput)
        fail(f"--checkpoint {checkpoint}: {exc}")
    except FFmpegError as exc:
        fail(f"ffmpeg could not write the heatmap video into {out}: {exc}")
    for folder in written:
        typer.echo(
            f"wrote {folder}/overlays.png (every head and the total; one per head: overlay_<head>.png), "
            f"{folder}/heatmaps.mp4 and {folder}/result.json"
        )


def _check_arguments(checkpoint, image, audio, out, video, every_frame) -> None:
    if checkpoint is None or out is None:
        fail("give --checkpoint CKPT and --out DIR (see ground --help)")
    if not Path(checkpoint).exists():
        from model.hub import HubError, checkpoint_source  # a local path that exists always wins

        try:
            checkpoint_source(checkpoint)  # a Hub repo id, fetched when the model loads
        except HubError as exc:
            fail(f"--checkpoint {exc}")
    if (image is None) == (video is None):
        fail("give exactly one of --image (with --audio) or --video")
    if image is not None and not audio:
        fail("--image needs at least one --audio")
    if video is not None and audio:
        fail("--video is grounded with its own sound track; drop --audio (or use --image with --audio)")
    if every_frame and video is None:
        fail("--every-frame needs --video")
    for path in [p for p in (image, video, *audio) if p is not None]:
        if not path.is_file():
            fail(f"{path} does not exist or is not a file")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")


def _check_writable(out: Path) -> None:
    """Fail before any model work when ``--out`` cannot be created or written: a path under a
    regular file, a folder without write permission, a read-only file system. The probe is a file
    created and removed in ``--out`` or, when it does not exist yet, in its nearest existing
    parent folder (the one ``mkdir`` would write into), so a failed run leaves no empty folder."""
    folder = out.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        fail(f"--out {out}: {folder} is a file, not a folder; give --out a folder path you can write")
    try:
        handle, probe = tempfile.mkstemp(prefix=".ground-write-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        fail(f"--out {out} cannot be written ({folder}: {exc.strerror or exc}); give --out a folder you can write")


def _ground_all(grounder, image, audio, out, separate, video, every_frame, window, progress, scale) -> list[Path]:
    from ground import inputs

    if video is not None:
        result = _ground_video(grounder, video, every_frame, window, progress)
        return [_write(result, out, {"video": str(video), "every_frame": every_frame}, progress, scale)]
    picture, v = grounder.encode_image(image)
    if separate:
        written = []
        for path, name in zip(audio, _folder_names(audio)):
            clip, notes, a, frame_mask = grounder.encode_audio(path)
            result = grounder.assemble(picture, [v], clip, notes, a, frame_mask, window)
            written.append(_write(result, out / name, {"image": str(image), "audio": [str(path)]}, progress, scale))
        return written
    clips = [inputs.load_audio(p) for p in audio]
    notes = {str(p): n for p, (_, n) in zip(audio, clips)}
    clip = clips[0][0] if len(clips) == 1 else inputs.mix([c for c, _ in clips])
    _, _, a, frame_mask = grounder.encode_audio(clip, inputs.SAMPLE_RATE)
    if len(clips) > 1:
        notes["mixed"] = "equal active RMS, summed, peak-limited"
    result = grounder.assemble(picture, [v], clip, notes, a, frame_mask, window)
    return [_write(result, out, {"image": str(image), "audio": [str(p) for p in audio]}, progress, scale)]


def _folder_names(paths: list[Path]) -> list[str]:
    """A folder name per audio file: its stem, numbered where stems repeat."""
    names, seen = [], {}
    for p in paths:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.stem) or "audio"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def _ground_video(grounder, video: Path, every_frame: bool, window, progress):
    from ground import inputs, render
    from pipeline.progress import progress_bar

    duration = inputs.video_duration(video)  # refuses a video without picture or sound before decoding
    clip, notes, a, frame_mask = grounder.encode_audio(video)
    if not every_frame:
        picture, v = grounder.encode_image(inputs.video_frame(video, duration / 2))
        return grounder.assemble(picture, [v], clip, notes, a, frame_mask, window)
    num_frames = frame_mask.shape[1]
    hop = clip.shape[0] / num_frames / inputs.SAMPLE_RATE
    # Full pictures live only until encoded; the MP4 needs them at its own height (bounded memory
    # for long HD videos). The middle one is kept whole for the overlays.
    # A frame time past the picture's end (a single frame under a longer sound track) gets the last
    # frame, still shown then (ffmpeg.extract_frame).
    frames, features, pending, middle = [], [], [], None
    with progress_bar(num_frames, f"frames of {video.name}", enabled=progress) as bar:
        for t in range(num_frames):
            last = inputs.video_frame(video, min((t + 0.5) * hop, duration))
            pending.append(last)
            middle = last if t == num_frames // 2 else middle
            if len(pending) == ENCODE_BATCH or t == num_frames - 1:
                features.extend(grounder.runner.encode_images(pending).split(1))
                frames.extend(render.thumbnail(p) for p in pending)
                bar.update(len(pending))
                pending = []
    return grounder.assemble(middle, features, clip, notes, a, frame_mask, window, frames=frames)


def _write(result, folder: Path, given: dict, progress: bool, scale: str = "shared") -> Path:
    from ground import render
    from pipeline.atomic import write_json
    from pipeline.progress import progress_bar

    try:
        folder.mkdir(parents=True, exist_ok=True)
        panels = render.overlays(result, scale)
        for name, panel in zip(result.heads, panels):
            panel.save(folder / f"overlay_{name}.png")
        render.sheet(panels).save(folder / "overlays.png")
        with progress_bar(len(result.times), "heatmap video", enabled=progress and result.frames is not None) as bar:
            render.video(folder / "heatmaps.mp4", result, result.heads, progress=bar.update, scale=scale)
        ranges = render.colour_ranges({name: result.mean_maps[name] for name in result.heads}, scale)
        colours = {"scale": scale, "overlay_ranges": {name: list(r) for name, r in ranges.items()}}
        summary = {"inputs": given, "colours": colours, **result.summary()}
        write_json(folder / "result.json", summary, indent=2, sort_keys=False)
    except OSError as exc:  # the probe passed, but the disk filled up or the folder changed since
        fail(
            f"cannot write {exc.filename or folder} ({exc.strerror or exc}); free space or give --out a folder "
            "you can write"
        )
    return folder


app.command("serve")(serve_command)
