"""`ground serve` in a real browser: Debian's chromium driven by Playwright against the real server
(a subprocess with a tiny checkpoint), plus the page's refusals and the command's one-line errors, the
upload limit, the server's upload folder (gone when it stops) and its loopback-only socket.

Without /usr/bin/chromium (or $CHROMIUM_BINARY) or Playwright the browser tests are skipped, except
under CI=true where they fail: .ci/run installs chromium.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ground.cli import app
from ground.serve import CURVE_ID, map_id
from tests.support import media

pytestmark = pytest.mark.slow
CHROMIUM = Path(os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"))  # Debian's package
# Playwright's own browser download is not reachable: its driver runs Debian's binary with these
# (no sandbox: CI runs as root; no /dev/shm: containers give it 64 MB).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # the microphone is chromium's fake device (a beep), allowed without a prompt
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
START_TIMEOUT_S = 120.0  # a cold import of gradio + torch on a loaded 2-core machine
RESULT_TIMEOUT_MS = 60_000
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "ground_serve.png"
HEADS = ["sound", "speech", "total"]
MAX_FILE_SIZE_MB = 1  # the test server's upload limit, so that an upload over it stays small


def _missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the browser test: .ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.factory import build_model

    torch.manual_seed(3)
    return save_checkpoint(build_model(ModelConfig.preset("tiny")), tmp_path_factory.mktemp("serve-ckpt") / "tiny")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ground serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"ground serve did not answer {url} within {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    uploads: Path  # the server's $GRADIO_TEMP_DIR: its own upload folder is made inside
    log: Path

    def stop(self) -> int:
        """SIGTERM, as `kill` and service managers stop it (kill -9 only if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """The real `ground serve` on a free port, started with the default host; always stopped."""
    tmp = tmp_path_factory.mktemp("serve")
    port, log, uploads = _free_port(), tmp / "server.log", tmp / "uploads"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-c",
        "from ground.cli import app; app(prog_name='ground')",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--port",
        str(port),
        "--max-file-size",
        str(MAX_FILE_SIZE_MB),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Server(proc, f"http://127.0.0.1:{port}/", uploads, log)
    try:
        _wait_until_up(proc, running.url, log)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium with a fresh profile, driven by Playwright."""
    if not CHROMIUM.is_file():
        _missing(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright's Python package is missing (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
            timeout=60_000,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture()
def page(browser, server):
    page = browser.new_page()
    hosts = []
    page.on("request", lambda request: hosts.append(request.url.split("/")[2] if "://" in request.url else ""))
    page.goto(server.url, timeout=60_000)
    page.wait_for_selector("#run", timeout=60_000)
    yield page
    page.close()
    # the page never calls out: every request went to the local server
    assert set(hosts) <= {server.url.split("/")[2]}, hosts


def _scene(tmp: Path) -> tuple[Path, Path, Path]:
    """A picture with two objects and a speech-like clip plus a tone to mix with it."""
    picture = Image.new("RGB", (200, 150), (70, 110, 160))
    picture.paste((230, 40, 40), (20, 40, 80, 110))
    picture.paste((240, 220, 30), (120, 30, 180, 120))
    picture.save(tmp / "scene.png")
    speech = media.write_audio(tmp / "speech.wav", media.speech_like(3.0, 16_000, seed=2), 16_000)
    sound = media.write_audio(tmp / "drum.wav", media.tone(220.0, 3.0, 44_100), 44_100)
    return tmp / "scene.png", speech, sound


def test_page_grounds_an_image_and_a_mixture(page, tmp_path):
    image, speech, sound = _scene(tmp_path)
    page.locator("#image input[type=file]").set_input_files(str(image))
    page.locator("#audio input[type=file]").set_input_files(str(speech))
    page.locator("#more-audio input[type=file]").set_input_files(str(sound))
    page.wait_for_selector("#image img", timeout=30_000)
    page.wait_for_selector("#more-audio [aria-label='drum.wav']", timeout=30_000)
    page.click("#run")
    loaded = " && ".join(f"document.querySelector('#{map_id(h)} img')?.naturalWidth > 0" for h in HEADS)
    page.wait_for_function(loaded, timeout=RESULT_TIMEOUT_MS)
    for head in HEADS:
        size = page.eval_on_selector(f"#{map_id(head)} img", "i => [i.naturalWidth, i.naturalHeight, i.src]")
        assert size[0] > 200 and size[1] > 150 and size[2], (head, size)  # the overlay: picture + colour bar + label
    page.wait_for_selector(f"#{CURVE_ID} svg .mark-line path", timeout=RESULT_TIMEOUT_MS)
    assert page.locator(f"#{CURVE_ID} svg .mark-line path").count() == 2  # one curve per head
    summary = page.locator("#summary").inner_text()
    assert "Dominant head over time" in summary and "| speech |" not in summary  # rendered as a table
    assert page.locator("#summary td", has_text="speech").count() == 1
    shot = tmp_path / "ground_serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1280
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":  # refresh the README's picture of the page
        Image.open(shot).convert("RGB").quantize(128).save(SCREENSHOT, optimize=True)


def test_page_grounds_a_clip_recorded_from_the_microphone(page, tmp_path):
    image, _, _ = _scene(tmp_path)
    page.locator("#image input[type=file]").set_input_files(str(image))
    page.locator("#audio button[aria-label='Record audio']").click()
    page.locator("#audio button:visible", has_text="Record").first.click()
    page.wait_for_timeout(2_000)
    page.locator("#audio button:visible", has_text="Stop").first.click()
    page.wait_for_selector("#audio button[aria-label='Play']", timeout=30_000)  # the recording is in place
    page.click("#run")
    page.wait_for_function(
        f"document.querySelector('#{map_id('total')} img')?.naturalWidth > 0", timeout=RESULT_TIMEOUT_MS
    )
    headline = page.locator("#summary").inner_text()
    seconds = float(re.search(r"Dominant head over time \(([0-9.]+) s\)", headline).group(1))
    assert 1.0 < seconds < 5.0, headline  # the ~2 s recorded, not a stray file


def test_page_refuses_missing_and_silent_audio_in_one_line(page, tmp_path):
    image, _, _ = _scene(tmp_path)
    page.locator("#image input[type=file]").set_input_files(str(image))
    page.wait_for_selector("#image img", timeout=30_000)
    page.click("#run")
    page.wait_for_selector(":text('give audio')", timeout=RESULT_TIMEOUT_MS)
    silent = media.write_audio(tmp_path / "silent.wav", media.tone(440.0, 2.0, amp=0.0), 16_000)
    page.locator("#audio input[type=file]").set_input_files(str(silent))
    page.wait_for_timeout(500)
    page.click("#run")
    page.wait_for_selector(":text('is silent')", timeout=RESULT_TIMEOUT_MS)
    assert page.locator(f"#{map_id('total')} img").count() == 0


def _toast(page, words: str) -> str:
    """The text of the error shown on the page that holds ``words`` (fails with every error shown)."""
    page.wait_for_selector(".toast-body", timeout=RESULT_TIMEOUT_MS)
    shown = page.locator(".toast-body").all_inner_texts()
    assert any(words in text for text in shown), shown
    return next(text for text in shown if words in text)


@pytest.mark.parametrize("case", ["text file", "decompression bomb"])
def test_page_refuses_a_bad_image_upload_in_one_line_without_server_paths(page, server, tmp_path, case):
    if case == "text file":
        upload, words = tmp_path / "notes.png", "image notes.png: image_decode: cannot open notes.png"
        upload.write_text("a shopping list, not a picture\n")
    else:  # 30000x30000 px claimed by a 100-byte file: PIL alone would refuse it with a traceback
        upload, words = media.write_huge_png_header(tmp_path / "bomb.png"), "image bomb.png: image_too_large"
    speech = media.write_audio(tmp_path / "speech.wav", media.speech_like(1.0), 16_000)
    page.locator("#audio input[type=file]").set_input_files(str(speech))
    page.locator("#image input[type=file]").set_input_files(str(upload))
    page.wait_for_selector("#image img", state="attached", timeout=30_000)  # the upload is in place
    page.click("#run")
    text = _toast(page, words)
    assert "give a readable JPEG/PNG/WebP file" in text, text
    assert str(server.uploads) not in text and "ground-serve-" not in text and "/tmp" not in text, text
    assert "Could not preprocess" not in page.inner_text("body")
    assert page.locator(f"#{map_id('total')} img").count() == 0


def test_page_refuses_an_upload_over_the_size_limit(page, server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_FILE_SIZE_MB * 2**20 + 1))
    page.locator("#image input[type=file]").set_input_files(str(big))
    text = _toast(page, "big.png")
    assert f"maximum allowed size of {MAX_FILE_SIZE_MB}.0 Mb" in text, text  # Gradio's words, refused in the page
    assert not list(server.uploads.rglob("big.png"))  # never stored on the server


# ------------------------------------------------------------------ the server without a browser


def _post_upload(server: Server, name: str, data: bytes) -> tuple[int, str]:
    """A file sent to Gradio's upload route as the page sends it (multipart/form-data)."""
    boundary = "ground-serve-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server.url + "gradio_api/upload",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_upload_route_refuses_a_file_over_the_limit_without_storing_it(server):
    status, text = _post_upload(server, "huge.wav", b"\0" * (MAX_FILE_SIZE_MB * 2**20 + 1))
    assert status == 413 and "maximum allowed size" in text, (status, text)
    assert not list(server.uploads.rglob("huge.wav"))


def test_the_server_listens_on_loopback_only_by_default(server):
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    listening = set()
    for proc in [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]:
        listening |= {
            (c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
        }
    assert listening == {("127.0.0.1", port)}, listening


# ------------------------------------------------------------------ the page's run, without a browser


@pytest.fixture(scope="module")
def grounder(checkpoint):
    from ground.api import Grounder

    return Grounder.from_checkpoint(checkpoint)


def test_a_video_is_grounded_on_its_middle_frame_with_its_own_soundtrack(grounder, tmp_path):
    from ground.serve import run_page

    clip = media.write_video(tmp_path / "clip.mp4", media.tone(330.0, 2.0, 44_100), 44_100, size=(96, 64))
    *overlays, curve, headline, summary = run_page(grounder, None, str(clip), None, None)
    assert len(overlays) == len(HEADS) and all(o.width > 96 and o.height > 64 for o in overlays)
    assert summary["image_size"] == [96, 64] and abs(summary["duration_s"] - 2.0) < 0.1
    assert list(curve.columns) == ["time (s)", "activation", "head"] and set(curve["head"]) == {"sound", "speech"}
    assert headline.startswith("**Dominant head over time** (2.00 s): ") and "| total |" in headline


@pytest.mark.parametrize(
    "case, message",
    [
        ("image and video", "give an image or a video (one of them)"),
        ("video and audio", "a video is grounded with its own sound track"),
        ("no picture", "give an image or a video (one of them)"),
        ("garbage audio", "cannot be decoded"),
        ("too short", "too short"),
        ("garbage image", "give a readable"),
        ("decompression bomb", "give a readable"),
        ("swept upload", "gone.png is no longer on the server: upload it again"),
    ],
)
def test_the_page_refuses_bad_input_in_one_line(grounder, tmp_path, case, message):
    import gradio as gr

    from ground.serve import run_page

    image = str(media.write_image(tmp_path / "white.png", size=(64, 48), colour=(255, 255, 255)))
    speech = str(media.write_audio(tmp_path / "speech.wav", media.speech_like(1.0), 16_000))
    video = str(media.write_video(tmp_path / "v.mp4", media.tone(330.0, 1.0, 44_100), 44_100))
    args = {
        "image and video": (image, video, speech),
        "video and audio": (None, video, speech),
        "no picture": (None, None, speech),
        "garbage audio": (image, None, str(media.write_garbage(tmp_path / "noise.wav"))),
        "too short": (image, None, str(media.write_audio(tmp_path / "blip.wav", media.tone(440.0, 0.01), 16_000))),
        "garbage image": (str(media.write_garbage(tmp_path / "photo.jpg")), None, speech),
        "decompression bomb": (str(media.write_huge_png_header(tmp_path / "bomb.png")), None, speech),
        "swept upload": (str(tmp_path / "gone.png"), None, speech),
    }[case]
    with pytest.raises(gr.Error) as err:
        run_page(grounder, *args, None)
    assert message in err.value.message and "\n" not in err.value.message
    assert str(tmp_path) not in err.value.message  # file names only, never where they lie


def test_the_page_names_an_upload_by_its_original_name_never_its_server_path(grounder, tmp_path):
    """As the page calls it: Gradio's file dicts, a path in the server's upload folder and the name
    the file had on the user's machine."""
    import gradio as gr

    from ground.serve import run_page

    stored = media.write_garbage(tmp_path / "0f3a9c" / "holiday_photo.jpg")
    speech = media.write_audio(tmp_path / "1b2c" / "speech.wav", media.speech_like(1.0), 16_000)
    image = {"path": str(stored), "orig_name": "holiday photo.jpg", "meta": {"_type": "gradio.FileData"}}
    more = [{"path": str(speech), "orig_name": "said.wav"}]
    with pytest.raises(gr.Error) as err:
        run_page(grounder, image, None, None, more)
    text = err.value.message
    assert text.startswith("image holiday photo.jpg: image_decode: cannot open holiday photo.jpg"), text
    assert str(tmp_path) not in text and "holiday_photo" not in text and "\n" not in text


def test_a_fault_of_the_program_is_one_line_on_the_page_and_its_traceback_in_the_log(tmp_path, capsys):
    import gradio as gr

    from ground.serve import run_page

    class Broken:  # a grounder with a bug: the page must not show its message (it names server paths)
        def ground(self, image, clip, sample_rate):
            raise RuntimeError(f"index out of range in {tmp_path / 'cache' / 'weights.bin'}")

    image = str(media.write_image(tmp_path / "white.png", size=(64, 48)))
    speech = str(media.write_audio(tmp_path / "speech.wav", media.speech_like(1.0), 16_000))
    with pytest.raises(gr.Error) as err:
        run_page(Broken(), image, None, speech, None)
    assert err.value.message == "grounding failed (RuntimeError); the server's log has the details"
    assert "Traceback" in capsys.readouterr().err  # the bug is in the server's log, whole


# ------------------------------------------------------------------ the command's own errors


def test_serve_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(tmp_path / "nothing")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1 and "nothing" in result.output


# uvicorn's server thread ends in SystemExit after the failed bind; the command itself logs one line
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_host_beyond_loopback_is_warned_about_and_a_failed_start_leaves_no_upload_folder(
    checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is on no machine: binding fails without opening any socket
    result = CliRunner().invoke(
        app, ["serve", "--checkpoint", str(checkpoint), "--host", "192.0.2.1", "--port", str(_free_port())]
    )
    assert result.exit_code == 2, result.output
    assert "warning: --host 192.0.2.1 opens the page beyond this machine" in result.output
    assert "error: cannot serve on 192.0.2.1:" in result.output and "Traceback" not in result.output
    assert list((tmp_path / "uploads").iterdir()) == []  # its own upload folder was made and removed
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "uploads")  # put back for the caller


def test_an_upload_folder_that_cannot_be_made_is_one_line(checkpoint, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "file" / "uploads"))
    result = CliRunner().invoke(app, ["serve", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: cannot create the upload folder under ") and result.output.count("\n") == 1
    assert "set GRADIO_TEMP_DIR to a writable folder" in result.output


def test_serve_refuses_a_busy_port_in_one_line(checkpoint):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--checkpoint", str(checkpoint), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"error: cannot serve on 127.0.0.1:{port}" in result.output and "--port" in result.output


def test_the_headline_spells_out_a_dozen_dominant_runs_and_counts_the_rest():
    from ground.serve import HEADLINE_SPANS, _headline

    runs = [{"head": ("sound", "speech")[i % 2], "start": 0.2 * i, "end": 0.2 * i + 0.2} for i in range(20)]
    heads = {
        "sound": {"peak": {"x": 3, "y": 4}, "mean_activation": 0.5},
        "total": {"peak": {"x": None, "y": None}, "mean_activation": None},
    }
    text = _headline({"dominant_segments": runs, "duration_s": 4.0, "heads": heads})
    assert text.count(" s, ") == HEADLINE_SPANS and f"({20 - HEADLINE_SPANS} more in result.json)" in text
    assert "| sound | (3, 4) | 0.500 |" in text and "| total | - | - |" in text


# ------------------------------------------------------------------ last: stopping the shared server


def test_stopping_the_server_removes_its_upload_folder_and_bad_input_left_no_traceback(server):
    status, text = _post_upload(server, "kept.wav", b"RIFF" + b"\0" * 1000)
    assert status == 200, text
    stored = Path(json.loads(text)[0])
    assert stored.is_file() and server.uploads in stored.parents
    folder = server.uploads / stored.relative_to(server.uploads).parts[0]
    assert folder.name.startswith("ground-serve-")
    assert server.stop() == 0  # SIGTERM: the page closes as on Ctrl+C
    assert not folder.exists() and list(server.uploads.iterdir()) == []
    log = server.log.read_text()
    # the refusals of this module (bad images, silent audio, ...) were one line on the page, nothing in the log
    assert "Traceback" not in log, log[-3000:]
