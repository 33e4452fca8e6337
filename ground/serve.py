"""`ground serve`: a local web page (Gradio) over ``ground.api.Grounder``.

Upload or record audio (several clips are mixed), upload an image or a video (its middle frame and its
own soundtrack), and see every head's map and the total next to the heads' activation over time.
The page binds to 127.0.0.1 unless told otherwise and makes no network calls: Gradio's analytics are
off, there is no share link, no server-side rendering (it would start node) and the default theme's
fonts are served by Gradio itself. Gradio is the ``serve`` extra, imported only when the command runs.

Uploads reach the project's own readers untouched (the click handler runs with Gradio's preprocessing
off, so Gradio never opens an image itself): bad files get the same one-line messages as ``ground``,
naming the upload's original file name, never a path on the server. Uploads are limited in size
(``--max-file-size``), kept in a folder of their own per server, swept after ``UPLOAD_TTL_S`` and
removed with the folder when the server stops.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from pipeline.cli_support import fail

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CURVE_ID = "curve"
HEADLINE_SPANS = 12  # dominant-head runs spelled out above the table; result.json has them all
# Every upload the page takes fits in this: a photo at the pixel limit (64 Mpx, a JPEG of ~20-30 MB),
# 30 s of audio in any format (the model uses no more; 30 s of 8-channel 96 kHz float WAV is 92 MB)
# or a few minutes of phone video. Larger files belong to the `ground` command, which reads local files.
DEFAULT_MAX_FILE_SIZE_MB = 100
# Uploads and rendered maps older than this are swept every UPLOAD_SWEEP_S while the server runs. They
# are not removed right after each run: the page keeps its inputs, and a second "Ground" (another clip
# added, say) sends the same uploads again.
UPLOAD_TTL_S = 3600
UPLOAD_SWEEP_S = 600
CACHE_PREFIX = "ground-serve-"


def map_id(head: str) -> str:
    """The HTML id of a head's map on the page (the browser test finds the images by it)."""
    return f"map-{head}"


def _gradio():
    # Analytics must be off before gradio is imported: it reads the variable at import time.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio

    return gradio


def _upload(value, default: str) -> tuple[str, str] | None:
    """(path on the server, name to show) of one input: Gradio's file dict (``path``, ``orig_name``),
    a file object with ``.name`` or a plain path (the Python API and the tests)."""
    if value is None:
        return None
    if isinstance(value, dict):
        path, name = value.get("path"), value.get("orig_name")
    else:
        path, name = getattr(value, "name", value), None
    if not path:
        return None
    path = str(path)
    return path, Path(name).name if name else (Path(path).name or default)


def _audio_uploads(recorded, uploads) -> list[tuple[str, str]]:
    files = [_upload(recorded, "the recording")] + [_upload(f, "the audio") for f in uploads or []]
    return [f for f in files if f is not None]


def _public(message: str, files: list[tuple[str, str]]) -> str:
    """``message`` with every server path replaced by the name its user knows: the upload's original
    file name, or the last component of any other path under the server's upload folder."""
    known = {}
    for path, name in files:
        known[path] = name
        known[os.path.realpath(path)] = name
    for path in sorted(known, key=len, reverse=True):
        message = message.replace(path, known[path])
    roots = {r for root in _upload_roots() for r in (root, os.path.realpath(root))}
    for root in sorted(roots, key=len, reverse=True):
        message = re.sub(re.escape(root) + r"[^\s'\"]*", lambda m: Path(m.group(0)).name or "the upload", message)
    return " ".join(message.split())  # one line, whatever the reader's message held


def _upload_roots() -> list[str]:
    from_env = os.environ.get("GRADIO_TEMP_DIR")
    return [r for r in (from_env, str(Path(tempfile.gettempdir()) / "gradio")) if r]


def _inputs(image: str | None, video: str | None, audio_paths: list[str]):
    """The picture and the 16 kHz clip of one run, as `ground` takes them: an image with one or more
    clips (mixed at equal loudness), or a video's middle frame with its own sound track."""
    from ground import inputs

    if (image is None) == (video is None):
        raise inputs.GroundInputError("give an image or a video (one of them)")
    for path in (image, video, *audio_paths):
        if path is not None and not Path(path).is_file():  # swept after UPLOAD_TTL_S
            raise inputs.GroundInputError(f"{path} is no longer on the server: upload it again")
    if video:
        if audio_paths:
            raise inputs.GroundInputError(
                "a video is grounded with its own sound track: remove the audio, or give an image instead of the video"
            )
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
    table = pd.DataFrame(
        {
            "time (s)": np.tile(result.times, len(heads)),
            "activation": np.concatenate([result.activation[h] for h in heads]),
            "head": np.repeat(heads, len(result.times)),
        }
    )
    return table.dropna()  # frames outside the valid audio have no activation


def run_page(grounder, image, video, recorded, uploads):
    """One click of "Ground": the overlays (heads then total), the curve and the summary.

    Each input is Gradio's file dict (the page runs with preprocessing off), a path or None."""
    import gradio as gr

    from ground.inputs import GroundInputError
    from ground.render import overlays as draw_overlays
    from model.checkpoint import CheckpointError
    from pipeline.format import SAMPLE_RATE

    picture, film = _upload(image, "the image"), _upload(video, "the video")
    audio = _audio_uploads(recorded, uploads)
    files = [f for f in (picture, film, *audio) if f is not None]
    try:
        image_path, clip = _inputs(picture and picture[0], film and film[0], [path for path, _ in audio])
        result = grounder.ground(image_path, clip, SAMPLE_RATE)
    except (GroundInputError, CheckpointError) as err:  # shown on the page as one line, not a traceback
        raise gr.Error(_public(str(err), files), print_exception=False) from None
    # a fault of the program, the page's last-resort handler: its traceback goes to the server's log only
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        raise gr.Error(
            f"grounding failed ({type(err).__name__}); the server's log has the details", print_exception=False
        ) from None
    overlays = draw_overlays(result)  # the heads on one colour scale, the total on its own (as `ground`)
    summary = result.summary()
    return (*overlays, _curve(result), _headline(summary), summary)


def _headline(summary: dict) -> str:
    """The summary in words: which head dominates when, and where each head's map peaks."""
    segments = summary["dominant_segments"]
    spans = ", ".join(f"{s['head']} {s['start']:.2f}-{s['end']:.2f} s" for s in segments[:HEADLINE_SPANS])
    if len(segments) > HEADLINE_SPANS:
        spans += f", ... ({len(segments) - HEADLINE_SPANS} more in result.json)"
    rows = [
        f"| {name} | {_xy(head['peak'])} | {_num(head['mean_activation'])} |" for name, head in summary["heads"].items()
    ]
    return "\n".join(
        [
            f"**Dominant head over time** ({summary['duration_s']:.2f} s): {spans}",
            "",
            "| map | peak (x, y) in pixels | mean activation |",
            "|---|---|---|",
            *rows,
        ]
    )


def _xy(peak: dict) -> str:
    return "-" if peak["x"] is None else f"({peak['x']}, {peak['y']})"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def build_page(grounder):
    """The page as a gr.Blocks (not launched): inputs on the left, maps and the curve on the right."""
    from ground.result import TOTAL

    gr = _gradio()
    names = [*grounder.head_names, TOTAL]
    with gr.Blocks(
        title="ground: where is the sound, where is the word", delete_cache=(UPLOAD_SWEEP_S, UPLOAD_TTL_S)
    ) as page:
        gr.Markdown(
            "## ground\nUpload an image or a video and upload or record audio; "
            "several clips are mixed. Each head's map and the total are shown with the heads' activation over time."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # a path, not pixels: the project's own image checks (decompression bombs, EXIF
                # orientation, truncated files) apply, with their one-line errors (see button.click)
                image = gr.Image(type="filepath", image_mode=None, sources=["upload"], label="image", elem_id="image")
                video = gr.Video(sources=["upload"], label="or a video (middle frame, its own audio)", elem_id="video")
                recorded = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio", elem_id="audio")
                uploads = gr.File(
                    file_count="multiple", file_types=["audio"], label="more audio (mixed in)", elem_id="more-audio"
                )
                button = gr.Button("Ground", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                with gr.Row():
                    maps = [gr.Image(type="pil", label=n, elem_id=map_id(n), interactive=False) for n in names]
                curve = gr.LinePlot(
                    x="time (s)", y="activation", color="head", label="activation over time", elem_id=CURVE_ID
                )
                headline = gr.Markdown(elem_id="summary")
                with gr.Accordion("result.json", open=False):
                    summary = gr.JSON(elem_id="result-json")
        # preprocess=False: run_page gets each upload's path and original name untouched. Gradio's own
        # preprocessing would open the image with PIL (a text file or a decompression bomb then fails
        # inside Gradio with a traceback and a message naming server paths) and convert audio.
        button.click(
            lambda *a: run_page(grounder, *a),
            [image, video, recorded, uploads],
            [*maps, curve, headline, summary],
            preprocess=False,
        )
    return page


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _stop_on_sigterm() -> object:
    """Make SIGTERM (``kill``, systemd, a test's terminate()) stop the page as Ctrl+C does, so the
    upload folder is removed; returns the previous handler (None outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _upload_folder() -> Path:
    """A folder of this server's own for Gradio's cache (uploads, rendered maps), under
    $GRADIO_TEMP_DIR when set, else the system's temp dir. Gradio reads the variable at import."""
    parent = os.environ.get("GRADIO_TEMP_DIR") or None
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=CACHE_PREFIX, dir=parent))
    except OSError as err:
        fail(
            f"cannot create the upload folder under {parent or tempfile.gettempdir()} ({err.strerror}); "
            "set GRADIO_TEMP_DIR to a writable folder"
        )


def serve_command(
    checkpoint: Annotated[
        str,
        typer.Option(
            help="a project checkpoint directory, a DenseAV checkpoint file, or a "
            "Hugging Face Hub repo id owner/name[@revision]"
        ),
    ],
    host: Annotated[
        str, typer.Option(help="address to bind; the default keeps the page on this machine")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="TCP port of the page")] = DEFAULT_PORT,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    speech_head: Annotated[
        Optional[int], typer.Option(help="index of the speech head (overrides the checkpoint's)")
    ] = None,
    num_heads: Annotated[
        Optional[int],
        typer.Option(
            min=1, help="heads of a DenseAV file that does not record them (its weights do not fix the count)"
        ),
    ] = None,
    max_file_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="largest upload in MB (2^20 bytes, as the page counts "
            "them); larger files are refused before they are stored",
        ),
    ] = DEFAULT_MAX_FILE_SIZE_MB,
) -> None:
    """Start the local web page: upload an image or video and audio, see both heads' maps and the time curve."""
    if not _is_loopback(host):
        typer.echo(
            f"warning: --host {host} opens the page beyond this machine: anyone who can reach "
            f"port {port} can upload files to it and run the model",
            err=True,
        )
    if not Path(checkpoint).exists():
        from model.hub import HubError, checkpoint_source  # a local path that exists always wins

        try:
            checkpoint_source(checkpoint)  # a Hub repo id, fetched when the model loads
        except HubError as exc:
            fail(f"--checkpoint {exc}")
    previous_env, folder = os.environ.get("GRADIO_TEMP_DIR"), _upload_folder()
    os.environ["GRADIO_TEMP_DIR"] = str(folder)  # before gradio's import: some of its modules read it then
    previous_handler = _stop_on_sigterm()
    try:
        _serve(checkpoint, host, port, device, speech_head, num_heads, max_file_size)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous_env is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous_env
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _serve(
    checkpoint: str,
    host: str,
    port: int,
    device: str,
    speech_head: int | None,
    num_heads: int | None,
    max_file_size: int,
) -> None:
    try:
        _gradio()
    except ImportError:
        fail("`ground serve` needs Gradio: pip install -e '.[serve]'")
    from ground.api import Grounder  # torch loads here, so `ground serve --help` stays instant

    try:
        grounder = Grounder.from_checkpoint(checkpoint, device=device, speech_head=speech_head, num_heads=num_heads)
    except (ValueError, OSError) as err:  # CheckpointError and GroundInputError are ValueErrors
        fail(f"cannot load --checkpoint {checkpoint}: {str(err).splitlines()[0]}")
    page = build_page(grounder)
    typer.echo(f"ground serve: http://{host}:{port} (Ctrl+C stops; uploads up to {max_file_size} MB)")
    try:
        page.launch(
            server_name=host,
            server_port=port,
            share=False,
            ssr_mode=False,
            quiet=True,
            show_error=True,
            max_file_size=max_file_size * 2**20,
        )
    except OSError as err:
        fail(
            f"cannot serve on {host}:{port}: {str(err).splitlines()[0]} (try another --port; "
            "--host must be an address of this machine)"
        )
