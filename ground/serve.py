"""`ground serve`: a local web page (Gradio) over ``ground.api.Grounder``.

Upload or record audio (several clips are mixed), upload an image or a video (its middle frame and its
own soundtrack), and see every head's map and the total next to the heads' activation over time.
The page binds to 127.0.0.1 unless told otherwise and makes no network calls: Gradio's analytics are
off, there is no share link, no server-side rendering (it would start node) and the default theme's
fonts are served by Gradio itself. Gradio is the ``serve`` extra, imported only when the command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CURVE_ID = "curve"
HEADLINE_SPANS = 12  # dominant-head runs spelled out above the table; result.json has them all


def map_id(head: str) -> str:
    """The HTML id of a head's map on the page (the browser test finds the images by it)."""
    return f"map-{head}"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _gradio():
    # Analytics must be off before gradio is imported: it reads the variable at import time.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio

    return gradio


def _audio_paths(recorded: str | None, uploads: list | None) -> list[str]:
    paths = [recorded] if recorded else []
    return paths + [str(getattr(f, "name", f)) for f in uploads or []]


def _inputs(image, video: str | None, audio_paths: list[str]):
    """The picture and the 16 kHz clip of one run, as `ground` takes them: an image with one or more
    clips (mixed at equal loudness), or a video's middle frame with its own sound track."""
    from ground import inputs

    if (image is None) == (video is None):
        raise inputs.GroundInputError("give an image or a video (one of them)")
    if video:
        if audio_paths:
            raise inputs.GroundInputError("a video is grounded with its own sound track: remove the audio, "
                                          "or give an image instead of the video")
        return inputs.video_frame(video, inputs.video_duration(video) / 2), inputs.load_audio(video)[0]
    if not audio_paths:
        raise inputs.GroundInputError("give audio with the image: upload or record a clip")
    clips = [inputs.load_audio(p)[0] for p in audio_paths]
    return image, clips[0] if len(clips) == 1 else inputs.mix(clips)


def _curve(result):
    """The heads' activation over time as a long table for Gradio's LinePlot."""
    import pandas as pd

    from ground.result import TOTAL

    heads = [h for h in result.heads if h != TOTAL]
    table = pd.DataFrame({
        "time (s)": np.tile(result.times, len(heads)),
        "activation": np.concatenate([result.activation[h] for h in heads]),
        "head": np.repeat(heads, len(result.times)),
    })
    return table.dropna()  # frames outside the valid audio have no activation


def run_page(grounder, image, video, recorded, uploads):
    """One click of "Ground": the overlays (heads then total), the curve and the summary."""
    import gradio as gr

    from ground.inputs import GroundInputError
    from ground.render import overlay
    from pipeline.format import SAMPLE_RATE

    try:
        picture, clip = _inputs(image, video, _audio_paths(recorded, uploads))
        result = grounder.ground(picture, clip, SAMPLE_RATE)
    except GroundInputError as err:  # shown on the page as one line, not a traceback
        raise gr.Error(str(err), print_exception=False) from None
    overlays = [overlay(result.image, result.mean_maps[h], h) for h in result.heads]
    summary = result.summary()
    return (*overlays, _curve(result), _headline(summary), summary)


def _headline(summary: dict) -> str:
    """The summary in words: which head dominates when, and where each head's map peaks."""
    segments = summary["dominant_segments"]
    spans = ", ".join(f"{s['head']} {s['start']:.2f}-{s['end']:.2f} s" for s in segments[:HEADLINE_SPANS])
    if len(segments) > HEADLINE_SPANS:
        spans += f", ... ({len(segments) - HEADLINE_SPANS} more in result.json)"
    rows = [f"| {name} | {_xy(head['peak'])} | {_num(head['mean_activation'])} |" for name, head in summary["heads"].items()]
    return "\n".join([f"**Dominant head over time** ({summary['duration_s']:.2f} s): {spans}", "",
                      "| map | peak (x, y) in pixels | mean activation |", "|---|---|---|", *rows])


def _xy(peak: dict) -> str:
    return "-" if peak["x"] is None else f"({peak['x']}, {peak['y']})"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_page(grounder):
    """The page as a gr.Blocks (not launched): inputs on the left, maps and the curve on the right."""
    from ground.result import TOTAL

    gr = _gradio()
    names = [*grounder.head_names, TOTAL]
    with gr.Blocks(title="ground: where is the sound, where is the word") as page:
        gr.Markdown("## ground\nUpload an image or a video and upload or record audio; "
                    "several clips are mixed. Each head's map and the total are shown with the heads' activation over time.")
        with gr.Row():
            with gr.Column(scale=1):
                # a path, not pixels: the project's own image checks (decompression bombs, EXIF
                # orientation, truncated files) apply, with their one-line errors
                image = gr.Image(type="filepath", image_mode=None, sources=["upload"], label="image", elem_id="image")
                video = gr.Video(sources=["upload"], label="or a video (middle frame, its own audio)", elem_id="video")
                recorded = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio", elem_id="audio")
                uploads = gr.File(file_count="multiple", file_types=["audio"], label="more audio (mixed in)", elem_id="more-audio")
                button = gr.Button("Ground", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                with gr.Row():
                    maps = [gr.Image(type="pil", label=n, elem_id=map_id(n), interactive=False) for n in names]
                curve = gr.LinePlot(x="time (s)", y="activation", color="head", label="activation over time",
                                    elem_id=CURVE_ID)
                headline = gr.Markdown(elem_id="summary")
                with gr.Accordion("result.json", open=False):
                    summary = gr.JSON(elem_id="result-json")
        button.click(lambda *a: run_page(grounder, *a), [image, video, recorded, uploads],
                     [*maps, curve, headline, summary])
    return page


def serve_command(
    checkpoint: Annotated[Path, typer.Option(help="a project checkpoint directory or a DenseAV checkpoint file")],
    host: Annotated[str, typer.Option(help="address to bind; the default keeps the page on this machine")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port of the page")] = DEFAULT_PORT,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    speech_head: Annotated[Optional[int], typer.Option(help="index of the speech head (overrides the checkpoint's)")] = None,
) -> None:
    """Start the local web page: upload an image or video and audio, see both heads' maps and the time curve."""
    try:
        _gradio()
    except ImportError:
        _fail("`ground serve` needs Gradio: pip install -e '.[serve]'")
    if not checkpoint.exists():
        _fail(f"--checkpoint {checkpoint} does not exist")
    from ground.api import Grounder  # torch loads here, so `ground serve --help` stays instant

    try:
        grounder = Grounder.from_checkpoint(checkpoint, device=device, speech_head=speech_head)
    except (ValueError, OSError) as err:  # CheckpointError and GroundInputError are ValueErrors
        _fail(f"cannot load --checkpoint {checkpoint}: {str(err).splitlines()[0]}")
    page = build_page(grounder)
    typer.echo(f"ground serve: http://{host}:{port} (Ctrl+C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"note: bound to {host}: anyone who can reach this port can use the model", err=True)
    try:
        page.launch(server_name=host, server_port=port, share=False, ssr_mode=False, quiet=True, show_error=True)
    except OSError as err:
        _fail(f"cannot serve on {host}:{port}: {str(err).splitlines()[0]} (try another --port)")
