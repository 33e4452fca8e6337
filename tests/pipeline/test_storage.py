"""pipeline.storage on a real S3-compatible server (SeaweedFS, tests/support/s3.py): the scheme
allow-list, the operations, conditional writes, multipart uploads, wrong credentials, and a
streaming read across a server crash and restart."""

import os
import time
from pathlib import Path

import pytest

from pipeline import storage
from pipeline.data.sources import LoaderError, list_shards


def test_locations_are_an_allow_list(tmp_path):
    assert storage.location("s3://shards/a/b/") == storage.S3Path("shards", "a/b")
    assert storage.location(Path("s3://shards/a/b")) == storage.S3Path("shards", "a/b")  # a Path ate a slash
    assert storage.location(f"file://{tmp_path}") == tmp_path
    assert storage.location("shards/places") == Path("shards/places")
    assert str(storage.S3Path("b", "p") / "x.tar") == "s3://b/p/x.tar"
    for bad in (
        "pipe:cat /etc/passwd",
        "http://example.com/x.tar",
        "https://a/b",
        "gs://b/p",
        "s3://",
        "file://host/x",
    ):
        with pytest.raises(storage.StorageError) as err:
            storage.location(bad)
        assert "\n" not in str(err.value)
    for bad in ("pipe:curl -s http://x/{0..3}.tar", "http://example.com/shards"):  # the loader's specs
        with pytest.raises(LoaderError, match="scheme is not accepted"):
            list_shards(f"{tmp_path},{bad}")


def test_operations_conditional_writes_and_multipart(s3_env, tmp_path, monkeypatch):
    d = storage.location(s3_env)
    assert storage.list_dir(d) == {} and not storage.is_dir(d)
    storage.write_bytes(d / "a.json", b"{}")
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes(d / "a.json", b"[]", if_absent=True)  # If-None-Match: *
    data, etag = storage.read_object(d / "a.json")
    storage.write_bytes(d / "a.json", b"[1]", if_match=etag)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes(d / "a.json", b"[2]", if_match=etag)  # rewritten since: If-Match fails
    assert storage.read_bytes(d / "a.json") == b"[1]"

    monkeypatch.setattr(storage, "MULTIPART_BYTES", 5 * 2**20)  # S3's smallest part
    big = os.urandom(11 * 2**20)
    (tmp_path / "big").write_bytes(big)
    storage.put_file(tmp_path / "big", d / "sub" / "big.tar")  # three parts
    with storage.open_read(d / "sub" / "big.tar") as f:
        assert f.read() == big
    assert storage.list_dir(d).keys() == {"a.json"}  # one level
    assert storage.list_tree(d).keys() == {"a.json", "sub/big.tar"}
    assert storage.list_tree(d)["sub/big.tar"].size == len(big)
    storage.get_file(d / "sub" / "big.tar", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == big

    # a killed uploader leaves an unfinished multipart upload: invisible, stored, removed by abort_uploads
    client = storage.client()
    client.create_multipart_upload(Bucket=d.bucket, Key=(d / "000007.tar").key)
    assert storage.abort_uploads(d / "000007") == 1
    assert storage.abort_uploads(d / "000007") == 0
    storage.remove(d / "a.json")
    assert not storage.exists(d / "a.json")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(d / "a.json")


def test_wrong_credentials_are_one_line_without_the_secret(s3_env, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.prep.cli import app

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-42")
    storage.forget_clients()
    result = CliRunner().invoke(app, ["inspect", s3_env])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused the credentials" in lines[0]
    assert "not-the-secret-42" not in result.output
    with pytest.raises(LoaderError, match="refused the credentials"):
        list_shards(s3_env)


def _socket_buffers() -> int:
    """The most a loopback connection's two ends can buffer (tcp_rmem's and tcp_wmem's maximum)."""
    total = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            total += int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            total += 8 * 2**20
    return total


def test_a_read_survives_a_server_crash_and_restart(s3_server, s3_env, monkeypatch):
    monkeypatch.setattr(storage, "READ_CHUNK", 256 * 2**10)
    monkeypatch.setattr(storage, "READ_AHEAD", 1)  # the reader stays close behind the consumer
    monkeypatch.setattr(storage, "BACKOFF_S", 0.25)
    loc = storage.location(s3_env) / "big.bin"
    # larger than what the kernel may already hold in flight when the server dies (the client's
    # receive and the server's send buffers, up to tcp_rmem + tcp_wmem): else the whole rest of the
    # body can arrive without a failed request, and the read needs no retry
    data = os.urandom(_socket_buffers() + 8 * 2**20)
    storage.write_bytes(loc, data)
    before = storage.read_retries()
    with storage.open_read(loc) as f:
        head = f.read(2**20)
        s3_server.proc.kill()  # a crash mid-read: the connection drops, the reader's requests fail
        s3_server.proc.wait()
        time.sleep(1.0)
        s3_server.start()  # (from this thread: the server dies with the thread that started it)
        rest = f.read()
    assert head + rest == data
    assert storage.read_retries() > before

    # a store that stays down: one line naming the object, after the bounded retries
    monkeypatch.setattr(storage, "BACKOFF_S", 0.02)
    monkeypatch.setattr(storage, "READ_RETRIES", 2)
    s3_server.proc.kill()
    s3_server.proc.wait()
    try:
        started = time.monotonic()
        with pytest.raises(storage.StorageError) as err, storage.open_read(loc) as f:
            f.read()
        message = str(err.value)
        assert loc.url in message and "\n" not in message and "AWS_ENDPOINT_URL" in message
        assert time.monotonic() - started < 30
    finally:
        s3_server.start()
