"""`--engine ray` on a local Ray cluster started here (loopback, 2 CPUs): the same shards and
manifests as the local engine, resume, retry, a killed worker and a killed driver, the shared
download rate limit; the local engine's workers building whole shards (the per-shard path a
Ray task runs); and the token bucket against a fake clock."""

import functools
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from pipeline import shard_dir
from pipeline.prep import ratelimit, ray_engine
from pipeline.prep.build import build_shards
from pipeline.prep.cli import app
from pipeline.prep.manifest import read_rows
from pipeline.prep.media import SkipItem
from pipeline.prep.ratelimit import TokenBucket
from pipeline.prep.ray_engine import RayOptions
from pipeline.prep.retry import retry_failed
from pipeline.prep.worker import WRITTEN
from tests.support import media, procs, shardgen

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[3]
TIMING = {"created", "wall_seconds", "stage_seconds", "updated", "retried"}


@pytest.fixture(scope="module")
def cluster():
    t0 = time.perf_counter()
    ray_engine.start_local(num_cpus=2)  # as `prep` starts it: every server on loopback
    print(f"\nlocal Ray cluster started in {time.perf_counter() - t0:.1f} s")
    yield
    ray.shutdown()


def make_items(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = [
        {"type": "speech" if i % 3 else "sound", "seed": i, "seconds": float(rng.uniform(0.6, 2.5))} for i in range(n)
    ]
    items[4]["seconds"] = "long"  # a failed row (the loader raises)
    items[7] = dict(items[2])  # a duplicate key
    return items


def snapshot(out: Path) -> dict:
    """Everything in a shard directory except timings: tar bytes, manifest rows, markers."""
    files = {}
    for path in sorted(out.iterdir()):
        if path.suffix == ".tar":
            files[path.name] = path.read_bytes()
        elif path.suffix == ".parquet":
            files[path.name] = read_rows(path)
        elif path.suffix == ".json":
            files[path.name] = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}
    return files


def rows_by_index(out: Path) -> list[int]:
    return sorted(
        r["index"] for s in shard_dir.committed_shards(out) for r in read_rows(shard_dir.parquet_path(out, s.index))
    )


# ---------------------------------------------------------------------------------------------
# loaders the tests' Ray workers import from this module


def load_flaky(marker_dir: str, item: dict):
    """Fails (rate_limited) for odd seeds until ``marker_dir/ok`` exists."""
    if item["seed"] % 2 and not (Path(marker_dir) / "ok").exists():
        raise SkipItem("rate_limited: HTTP Error 429")
    return shardgen.load_item(item)


def load_killing_once(marker_dir: str, item: dict):
    """Kills its own worker process at seed 9 (shard 1, mid-shard) the first time only."""
    marker = Path(marker_dir) / f"killed-{item['seed']}"
    if item["seed"] == 9 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return shardgen.load_item(item)


def load_killing_always(item: dict):
    if item["seed"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return shardgen.load_item(item)


def load_slow(item: dict):
    time.sleep(0.15)
    return shardgen.load_item(item)


def load_very_slow(item: dict):
    time.sleep(0.5)
    return shardgen.load_item(item)


def load_paced(item: dict):
    """Records when the cluster-wide limiter let it start; the first item to get there (whichever
    task runs it) answers "too many requests", so the back-off comes early in every task order."""
    ratelimit.acquire()
    granted = time.time()
    try:
        os.close(os.open(item["first_flag"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        ratelimit.back_off(1.0)
    except FileExistsError:
        pass
    media_ = shardgen.load_item(item)
    media_.meta["granted"] = granted
    return media_


# ---------------------------------------------------------------------------------------------
# the local engine's workers building whole shards (the per-shard path a Ray task runs)


def test_local_workers_building_whole_shards_write_what_one_process_writes(tmp_path):
    items = make_items(26)  # 5 shards of 6 for 2 workers: whole shards in the workers
    inline = build_shards(
        items, shardgen.load_item, tmp_path / "inline", key=shardgen.item_key, shard_size=6, workers=0, progress=False
    )
    pooled = build_shards(
        items, shardgen.load_item, tmp_path / "pooled", key=shardgen.item_key, shard_size=6, workers=2, progress=False
    )
    assert snapshot(tmp_path / "pooled") == snapshot(tmp_path / "inline")
    assert (pooled.shards_built, pooled.written, pooled.failures) == (5, 24, {"error": 1, "duplicate_key": 1})
    assert pooled.written == inline.written


def test_a_local_worker_killed_mid_shard_leaves_every_row_once(tmp_path):
    items = make_items(26)
    summary = build_shards(
        items,
        functools.partial(load_killing_once, str(tmp_path)),
        tmp_path / "out",
        key=shardgen.item_key,
        shard_size=6,
        workers=2,
        progress=False,
    )
    assert (tmp_path / "killed-9").exists() and summary.items_processed == 26
    assert rows_by_index(tmp_path / "out") == list(range(26)) and not shard_dir.list_dir(tmp_path / "out").partial_files
    build_shards(
        items, shardgen.load_item, tmp_path / "inline", key=shardgen.item_key, shard_size=6, workers=0, progress=False
    )
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "inline")


def test_an_item_that_always_kills_a_local_worker_is_one_worker_crashed_row(tmp_path):
    items = [{"type": "speech", "seed": i, "seconds": 1.0} for i in range(16)]
    summary = build_shards(
        items, load_killing_always, tmp_path / "out", key=shardgen.item_key, shard_size=4, workers=2, progress=False
    )
    assert summary.failures == {"worker_crashed": 1} and summary.written == 15
    assert rows_by_index(tmp_path / "out") == list(range(16))


def test_a_local_retry_of_many_shards_keeps_the_old_samples(tmp_path):
    items = [{"type": "speech", "seed": i, "seconds": 1.0 + 0.05 * i} for i in range(20)]
    (tmp_path / "markers").mkdir()
    load = functools.partial(load_flaky, str(tmp_path / "markers"))
    out = tmp_path / "out"
    build_shards(items, load, out, key=shardgen.item_key, shard_size=4, workers=2, progress=False)
    (tmp_path / "markers" / "ok").write_text("")
    summary = retry_failed(
        out, kinds=["rate_limited"], workers=2, progress=False, load=load
    )  # 5 shards: whole ones per worker
    assert (summary.shards_built, summary.written, summary.failed) == (5, 20, 0)
    build_shards(
        items, shardgen.load_item, tmp_path / "clean", key=shardgen.item_key, shard_size=4, workers=0, progress=False
    )
    for shard in range(5):
        assert shard_dir.tar_path(out, shard).read_bytes() == shard_dir.tar_path(tmp_path / "clean", shard).read_bytes()


def test_ctrl_c_stops_local_workers_mid_shard_at_once_and_a_rerun_finishes(tmp_path):
    items = [{"type": "speech", "seed": i, "seconds": 0.8} for i in range(40)]  # 4 shards of 10 s each
    out = tmp_path / "out"
    # The driver takes Ctrl-C as a terminal's foreground job does, even when this suite runs as a
    # background job of a script (`pytest &`), whose children inherit SIGINT ignored.
    script = (
        "import json, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from tests.pipeline.prep.test_ray_engine import load_very_slow\n"
        "from tests.support import shardgen\n"
        "from pipeline.prep.build import build_shards\n"
        "build_shards(json.loads(sys.argv[1]), load_very_slow, sys.argv[2], key=shardgen.item_key,"
        " shard_size=10, workers=2, progress=False)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(items), str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    kids = procs.wait_for_children(driver, 2, timeout=60)
    time.sleep(2.0)  # both workers are mid-shard
    driver.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = driver.communicate(timeout=60)
    assert driver.returncode != 0 and "KeyboardInterrupt" in err
    assert time.monotonic() - started < 5, "waited for the shards in flight"
    assert not procs.survivors(kids, timeout=10)
    assert not shard_dir.committed_shards(out)
    rerun = build_shards(
        items, shardgen.load_item, out, key=shardgen.item_key, shard_size=10, workers=2, progress=False
    )
    assert rerun.shards_built == 4 and rows_by_index(out) == list(range(40))


# ---------------------------------------------------------------------------------------------
# the token bucket, deterministically


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_paces_bursts_and_backs_off():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]  # a burst of 3, then 2/s
    clock.now += 10  # idle: the burst refills, never beyond 3
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    clock.now += 0.25
    assert bucket.reserve() == 0.75  # slots stay booked while time passes
    clock.now += 20
    bucket.back_off(5.0)
    assert bucket.reserve() == 5.0  # nobody starts during the pause ...
    assert bucket.reserve() == 5.5  # ... and after it the rate, not a burst
    clock.now += 5.0
    assert bucket.reserve() == 1.0
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate=0.0)


# ---------------------------------------------------------------------------------------------
# on a real local cluster


def test_ray_engine_writes_what_the_local_engine_writes_and_resumes(cluster, tmp_path):
    items = make_items(20)
    local = build_shards(
        items, shardgen.load_item, tmp_path / "local", key=shardgen.item_key, shard_size=6, workers=2, progress=False
    )
    on_ray = build_shards(
        items,
        shardgen.load_item,
        tmp_path / "ray",
        key=shardgen.item_key,
        shard_size=6,
        ray=RayOptions(),
        progress=False,
    )
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")  # byte-identical tars, same manifests
    for field in ("shards_built", "items_processed", "written", "failed", "failures"):
        assert getattr(on_ray, field) == getattr(local, field)
    assert on_ray.failures == {"error": 1, "duplicate_key": 1}
    again = build_shards(
        items,
        shardgen.load_item,
        tmp_path / "ray",
        key=shardgen.item_key,
        shard_size=6,
        ray=RayOptions(),
        progress=False,
    )
    assert (again.shards_skipped, again.shards_built) == (4, 0)


def test_one_progress_bar_counts_every_task_by_reason(cluster, tmp_path, capsys):
    build_shards(
        make_items(20),
        shardgen.load_item,
        tmp_path / "ray",
        key=shardgen.item_key,
        shard_size=6,
        ray=RayOptions(),
        desc="bar",
    )
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("bar: 100%") and "20/20" in bar
    assert "ok=18 failed=2 (" in bar and "error 1" in bar and "duplicate_key 1" in bar


def test_parts_on_ray_then_the_rest_locally_equal_one_run(cluster, tmp_path):
    items = make_items(20)
    build_shards(
        items, shardgen.load_item, tmp_path / "one", key=shardgen.item_key, shard_size=6, workers=1, progress=False
    )
    first = build_shards(
        items,
        shardgen.load_item,
        tmp_path / "split",
        key=shardgen.item_key,
        shard_size=6,
        part=(0, 2),
        ray=RayOptions(),
        progress=False,
    )
    assert first.shards_built == 2
    rest = build_shards(
        items, shardgen.load_item, tmp_path / "split", key=shardgen.item_key, shard_size=6, workers=2, progress=False
    )
    assert (rest.shards_skipped, rest.shards_built) == (2, 2)
    assert snapshot(tmp_path / "split") == snapshot(tmp_path / "one")


def test_retry_on_ray_rewrites_only_the_failed_rows(cluster, tmp_path):
    items = [{"type": "speech", "seed": i, "seconds": 1.0 + 0.1 * i} for i in range(10)]
    markers = tmp_path / "markers"
    markers.mkdir()
    load = functools.partial(load_flaky, str(markers))
    out = tmp_path / "shards"
    first = build_shards(items, load, out, key=shardgen.item_key, shard_size=4, ray=RayOptions(), progress=False)
    assert first.failures == {"rate_limited": 5}
    (markers / "ok").write_text("")
    summary = retry_failed(out, kinds=["rate_limited"], progress=False, load=load, ray=RayOptions())
    assert (summary.shards_built, summary.written, summary.failed) == (3, 10, 0)
    build_shards(
        items, shardgen.load_item, tmp_path / "clean", key=shardgen.item_key, shard_size=4, workers=0, progress=False
    )
    for shard in range(3):
        assert shard_dir.tar_path(out, shard).read_bytes() == shard_dir.tar_path(tmp_path / "clean", shard).read_bytes()
    assert not (out / ".retry").exists()


def test_a_worker_killed_mid_shard_is_retried_and_every_row_lands_once(cluster, tmp_path):
    items = make_items(20)
    out = tmp_path / "ray"
    load = functools.partial(load_killing_once, str(tmp_path))
    summary = build_shards(
        items, load, out, key=shardgen.item_key, shard_size=6, ray=RayOptions(max_retries=2), progress=False
    )
    assert (tmp_path / "killed-9").exists()  # the worker really died on shard 1
    assert rows_by_index(out) == list(range(20))
    assert summary.items_processed == 20 and not shard_dir.list_dir(out).partial_files
    build_shards(
        items, shardgen.load_item, tmp_path / "local", key=shardgen.item_key, shard_size=6, workers=2, progress=False
    )
    assert snapshot(out) == snapshot(tmp_path / "local")


def test_an_item_that_always_kills_its_worker_is_isolated_as_worker_crashed(cluster, tmp_path):
    items = [{"type": "speech", "seed": i, "seconds": 1.0} for i in range(8)]
    out = tmp_path / "ray"
    summary = build_shards(
        items,
        load_killing_always,
        out,
        key=shardgen.item_key,
        shard_size=4,
        ray=RayOptions(max_retries=1),
        progress=False,
    )
    assert summary.failures == {"worker_crashed": 1} and summary.written == 7
    crashed = [r for r in read_rows(shard_dir.parquet_path(out, 0)) if r["status"] != WRITTEN]
    assert [r["key"] for r in crashed] == ["speech_3"]


def test_the_download_limiter_is_shared_by_every_task(cluster, tmp_path):
    flag = str(tmp_path / "first")
    items = [{"type": "speech", "seed": i, "seconds": 0.8, "first_flag": flag} for i in range(12)]
    out = tmp_path / "ray"
    rate = 8.0
    build_shards(
        items, load_paced, out, key=shardgen.item_key, shard_size=3, ray=RayOptions(download_rate=rate), progress=False
    )
    rows = [r for s in shard_dir.committed_shards(out) for r in read_rows(shard_dir.parquet_path(out, s.index))]
    granted = {r["index"]: json.loads(r["meta"])["granted"] for r in rows}
    times = sorted(granted.values())
    # 4 shard tasks on 2 CPUs, one pace: any j - i grants span at least (j - i) intervals. Measured
    # where the task starts its download, so one actor round trip of jitter (a loaded machine
    # answers one task late and the next on time) is allowed, but never a missing pace.
    spans = [times[j] - times[i] - (j - i) / rate for i in range(len(times)) for j in range(i + 1, len(times))]
    assert min(spans) >= -0.15, spans
    # the back-off paused everyone: the grants span a second more than the pace alone gives (less
    # the slots two running tasks had already booked, and the jitter above)
    assert times[-1] - times[0] >= 1.0 + (len(times) - 3) / rate - 0.15, times
    with pytest.raises(ValueError):
        ray.get_actor(ratelimit.ACTOR_NAME)  # gone with its build


def test_a_killed_driver_leaves_a_directory_that_a_rerun_finishes(cluster, tmp_path):
    items = [{"type": "speech", "seed": i, "seconds": 0.8} for i in range(24)]
    out = tmp_path / "ray"
    script = (
        "import json, sys\n"
        "from tests.pipeline.prep.test_ray_engine import load_slow\n"
        "from tests.support import shardgen\n"
        "from pipeline.prep.build import build_shards\n"
        "from pipeline.prep.ray_engine import RayOptions\n"
        "build_shards(json.loads(sys.argv[1]), load_slow, sys.argv[2], key=shardgen.item_key, shard_size=4,"
        " ray=RayOptions(num_cpus=2), progress=False)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(items), str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not shard_dir.committed_shards(out) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert driver.poll() is None, "the driver ended before it could be killed"
        assert shard_dir.committed_shards(out), "no shard committed in 120 s"
        family = {pid: _cmdline(pid) for pid in _descendants(driver.pid)}
        # The Ray this build started (GCS, raylet, workers, agents, the driver's own worker) listens
        # on loopback only: anyone reaching one of its ports could run code on this machine.
        sockets = _listening_sockets([driver.pid, *family])
        assert len(sockets) >= 4, sockets  # at least the GCS, the raylet, a task's worker, the driver
        assert all(_loopback(ip) for _, ip, _ in sockets), [
            (family.get(pid, "driver")[:60], ip, port) for pid, ip, port in sockets if not _loopback(ip)
        ]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        # Nothing that writes shards outlives the driver. Ray 2.60's dashboard and runtime-env
        # agents do (they miss their raylet's death): killed here, see docs/prep-on-ray.md.
        agents = [pid for pid, cmd in family.items() if cmd.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))]
        left = procs.survivors([pid for pid in family if pid not in agents], timeout=30)
        for pid in [*left, *agents]:
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert not left, {pid: family[pid] for pid in left}
    finally:
        if driver.poll() is None:
            driver.kill()
    done_before = len(shard_dir.committed_shards(out))
    assert done_before < 6
    rerun = build_shards(
        items, shardgen.load_item, out, key=shardgen.item_key, shard_size=4, ray=RayOptions(), progress=False
    )
    assert rerun.shards_skipped == done_before and rerun.shards_built == 6 - done_before
    assert rows_by_index(out) == list(range(24))
    build_shards(
        items, shardgen.load_item, tmp_path / "local", key=shardgen.item_key, shard_size=4, workers=2, progress=False
    )
    assert {k: v for k, v in snapshot(out).items() if k != "dataset.json"} == {
        k: v for k, v in snapshot(tmp_path / "local").items() if k != "dataset.json"
    }


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _listening_sockets(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket (IPv4 or IPv6) of ``pids``."""
    found = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        found += [(pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1 included


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        kids = [k for p in frontier for k in procs.children(p)]
        found += kids
        frontier = kids
    return found


def test_prep_shards_places_engine_ray_on_the_command_line(cluster, tmp_path):
    entries = [
        {
            "wav": f"wavs/0/u{i}.wav",
            "image": f"b/bakery/i{i}.jpg",
            "audio": media.speech_like(2.0 + i % 3, 16_000, seed=i),
            "sr": 16_000,
            "image_size": (96, 80),
            "uttid": f"U{i}",
            "speaker": "S",
            "asr_text": "words",
        }
        for i in range(7)
    ]
    meta = media.places_tree(tmp_path / "tree", entries)
    runner = CliRunner()
    for engine in ("local", "ray"):
        result = runner.invoke(
            app,
            [
                "shards",
                "places",
                "--metadata",
                str(meta),
                "--audio-root",
                str(tmp_path / "tree" / "PlacesAudio_400k_distro"),
                "--image-root",
                str(tmp_path / "tree" / "places205"),
                "--out",
                str(tmp_path / engine),
                "--shard-size",
                "3",
                "--workers",
                "2",
                "--engine",
                engine,
                "--no-progress",
            ],
        )
        assert result.exit_code == 0, result.output
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    # a wav that was missing is there now: `prep retry --engine ray` rebuilds only its shard
    missing = media.places_tree(tmp_path / "tree2", [*entries[:6], {**entries[6], "audio": None}])
    roots = [
        "--audio-root",
        str(tmp_path / "tree2" / "PlacesAudio_400k_distro"),
        "--image-root",
        str(tmp_path / "tree2" / "places205"),
    ]
    built = runner.invoke(
        app,
        [
            "shards",
            "places",
            "--metadata",
            str(missing),
            *roots,
            "--out",
            str(tmp_path / "retry"),
            "--shard-size",
            "3",
            "--no-progress",
        ],
    )
    assert built.exit_code == 0 and json.loads((tmp_path / "retry" / "dataset.json").read_text())["failed"] == 1
    media.write_audio(tmp_path / "tree2" / "PlacesAudio_400k_distro" / entries[6]["wav"], entries[6]["audio"], 16_000)
    retried = runner.invoke(
        app, ["retry", str(tmp_path / "retry"), "--engine", "ray", "--downloads-per-second", "50", "--no-progress"]
    )
    assert retried.exit_code == 0, retried.output
    assert {k: v for k, v in snapshot(tmp_path / "retry").items() if k.endswith((".tar", ".parquet"))} == {
        k: v for k, v in snapshot(tmp_path / "local").items() if k.endswith((".tar", ".parquet"))
    }
    refused = runner.invoke(
        app,
        [
            "shards",
            "places",
            "--metadata",
            str(meta),
            "--audio-root",
            str(tmp_path / "tree" / "PlacesAudio_400k_distro"),
            "--image-root",
            str(tmp_path / "tree" / "places205"),
            "--out",
            str(tmp_path / "x"),
            "--ray-address",
            "auto",
        ],
    )
    assert refused.exit_code == 2 and "error: --ray-address needs --engine ray" in refused.output


@pytest.mark.parametrize(
    "address, message",
    [
        ("127.0.0.1:1", "--ray-address 127.0.0.1:1: nothing answers there"),  # Ray alone would retry for minutes
        ("no-port-here", "give auto or HOST:PORT"),
    ],
)
def test_an_unreachable_ray_address_is_one_line_in_seconds(tmp_path, address, message):
    entries = [
        {
            "wav": "wavs/0/u0.wav",
            "image": "b/bakery/i0.jpg",
            "audio": media.speech_like(2.0, 16_000),
            "sr": 16_000,
            "image_size": (96, 80),
            "uttid": "U0",
            "speaker": "S",
            "asr_text": "words",
        }
    ]
    meta = media.places_tree(tmp_path / "tree", entries)
    t0 = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.prep.cli",
            "shards",
            "places",
            "--metadata",
            str(meta),
            "--audio-root",
            str(tmp_path / "tree" / "PlacesAudio_400k_distro"),
            "--image-root",
            str(tmp_path / "tree" / "places205"),
            "--out",
            str(tmp_path / "out"),
            "--engine",
            "ray",
            "--ray-address",
            address,
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and time.monotonic() - t0 < 30
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"] and message in result.stderr
    assert not shard_dir.committed_shards(tmp_path / "out")


def test_downloads_per_second_needs_the_ray_engine(tmp_path):
    seg, lab = media.audioset_csvs(tmp_path, [("abcdefghijk", 0, 10, ["/m/09x0r"])], {"/m/09x0r": "Speech"})
    result = CliRunner().invoke(
        app,
        [
            "shards",
            "audioset",
            "--segments",
            str(seg),
            "--labels",
            str(lab),
            "--out",
            str(tmp_path / "out"),
            "--downloads-per-second",
            "2",
        ],
    )
    assert result.exit_code == 2 and "error: --downloads-per-second paces a Ray build (--engine ray)" in result.output


def test_audioset_downloads_on_ray_through_yt_dlp_with_the_cluster_rate(cluster, tmp_path):
    served = tmp_path / "served"
    tone = media.stepped_tone(16.0, 44_100)
    media.write_video(served / "dlvideo0001.mp4", np.stack([tone, 0.5 * tone]), 44_100)
    segments = [("dlvideo0001", float(s), float(s) + 5, ["/m/04rlf"]) for s in range(4)] + [
        ("ratelimited", 0, 10, ["/m/04rlf"])
    ]
    seg, lab = media.audioset_csvs(tmp_path, segments, {"/m/04rlf": "Music"})
    with media.serve_directory(served) as base:
        t0 = time.monotonic()
        result = CliRunner().invoke(
            app,
            [
                "shards",
                "audioset",
                "--segments",
                str(seg),
                "--labels",
                str(lab),
                "--out",
                str(tmp_path / "out"),
                "--url-template",
                base + "/{ytid}.mp4",
                "--retries",
                "1",
                "--retry-wait",
                "0",
                "--shard-size",
                "2",
                "--engine",
                "ray",
                "--downloads-per-second",
                "2",
                "--no-progress",
            ],
        )
        seconds = time.monotonic() - t0
    assert result.exit_code == 0, result.output
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["written"] == 4 and dataset["failures"] == {"rate_limited": 1}
    assert seconds >= 5 / 2 - 0.5  # six download starts (one retried) at 2/s over the cluster
    print(f"\n5 segments, 6 yt-dlp runs on Ray: {seconds:.1f} s")


def test_a_cluster_started_with_ray_start_is_joined_by_address(tmp_path):
    """The `ray start --head` path of docs/prep-on-ray.md, on loopback; the driver is a separate
    process (this one may already be in a Ray session)."""
    entries = [
        {
            "wav": f"wavs/0/u{i}.wav",
            "image": f"b/bakery/i{i}.jpg",
            "audio": media.speech_like(2.0, 16_000, seed=i),
            "sr": 16_000,
            "image_size": (96, 80),
            "uttid": f"U{i}",
            "speaker": "S",
            "asr_text": "words",
        }
        for i in range(5)
    ]
    meta = media.places_tree(tmp_path / "tree", entries)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    ray_bin = Path(sys.executable).with_name("ray")
    # Ray 2.60 authenticates every client with a shared token: this cluster's own, given to both.
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "OMP_NUM_THREADS": "1",
        # this test's cluster on loopback only (`ray start` replaces 127.0.0.1 by the machine's address otherwise)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    t0 = time.monotonic()
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--temp-dir",
            str(temp),
            "--block",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        while not _listening(port):
            assert head.poll() is None and time.monotonic() - t0 < 90, "ray start --head did not come up"
            time.sleep(0.2)
        print(f"\nray start --head answered after {time.monotonic() - t0:.1f} s")
        common = [
            "shards",
            "places",
            "--metadata",
            str(meta),
            "--audio-root",
            str(tmp_path / "tree" / "PlacesAudio_400k_distro"),
            "--image-root",
            str(tmp_path / "tree" / "places205"),
            "--shard-size",
            "2",
            "--no-progress",
        ]
        joined = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.prep.cli",
                *common,
                "--out",
                str(tmp_path / "ray"),
                "--engine",
                "ray",
                "--ray-address",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert joined.returncode == 0, joined.stderr[-2000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its daemons on SIGTERM ...
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # ... not always all of them: the rest of its session
        except ProcessLookupError:
            pass
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
    local = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "local"), "--workers", "2"])
    assert local.exit_code == 0, local.output
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")


def test_the_prep_benchmark_measures_ray_against_the_local_engine(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "bench/prep.py",
            "--clips",
            "16",
            "--shard-size",
            "4",
            "--rounds",
            "1",
            "--engine",
            "ray",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for line in (
        "local w=1",
        "local w=2",
        "ray 2 CPUs",
        "speed-up 1 -> 2 workers",
        "ray / local w=2 clips/s",
        "Ray started in",
    ):
        assert line in result.stdout, result.stdout
    assert "tasks" in result.stdout and "Ray daemons" in result.stdout
