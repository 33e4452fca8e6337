"""Where shard directories live: a local folder or a prefix in an S3-compatible object store, and
the one client that reads and writes the store.

**Locations.** ``location(spec)`` turns what a user wrote (``--out``, ``data.speech``, ``prep
inspect DIR``) into a ``pathlib.Path`` (a local path or ``file://``) or an ``S3Path``
(``s3://bucket/prefix``). The schemes are an allow-list: ``pipe:``, ``http:`` and every other
``scheme:`` are refused with one line, so no shard name is ever run as a command or fetched from
an arbitrary URL (webdataset's ``pipe:`` runs its text in a shell). A ``Path`` that swallowed one
slash of a URL (``Path("s3://b/p")`` is ``s3:/b/p``) is read back as the URL rather than as a
local folder named ``s3:``.

**Operations** take either kind of location and behave alike: ``exists``, ``read_bytes``,
``write_bytes`` (atomic: a PUT replaces an object whole; ``if_absent``/``if_match`` are the
conditional writes ``If-None-Match: *`` / ``If-Match: ETAG``), ``put_file`` (multipart above
``MULTIPART_BYTES``, the upload aborted on failure), ``get_file``, ``copy``, ``remove``,
``list_dir`` (one level, with sizes and a change stamp), ``list_tree`` and ``open_read``: a
sequential reader that fetches ahead in a thread and, on a transient error (a dropped connection,
a restarting server, a 5xx), re-requests the rest of the object with backoff, ``READ_RETRIES``
times, each counted in ``read_retries()`` and logged, before one ``StorageError`` naming the
object.

**Credentials** are boto3's: the endpoint, region and keys come only from the standard AWS
environment variables and config files (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``, ``~/.aws/config``, instance roles ...), never from a command line; no
message, log line or file written by the project contains them. A client is made lazily, one per
process (keyed by pid, so a DataLoader worker or pool process forked from a parent that already
had one makes its own). boto3 is imported only when an ``s3://`` location is used (the ``s3``
extra).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import queue
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

ALLOWED = "a local path, file:///path or s3://bucket/prefix"
MULTIPART_BYTES = 64 * 2**20  # larger uploads go in parts of this size (S3 allows 10,000 parts: 640 GB)
READ_CHUNK = 2**20  # bytes per read of an object's body
READ_AHEAD = 16  # chunks a reader fetches ahead of its consumer (16 MiB)
READ_RETRIES = 6  # re-requests of one object after transient errors, before giving up
BACKOFF_S = 0.5  # the first wait; doubled per retry (0.5 + 1 + 2 + 4 + 8 + 16 s at most)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class StorageError(ValueError):
    """A location that cannot be used, or a store that refused or stayed unreachable; the message
    (one line) names the location and what to do, and never a credential."""


@dataclass(frozen=True, order=True)
class S3Path:
    """``s3://bucket/key``: a prefix (a "directory") or an object. Not ``os.PathLike`` on purpose:
    no local file function can be handed one by mistake."""

    bucket: str
    key: str = ""  # without leading or trailing slashes

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, name: str) -> "S3Path":
        name = str(name).strip("/")
        return S3Path(self.bucket, f"{self.key}/{name}" if self.key else name)

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> "S3Path":
        return S3Path(self.bucket, self.key.rpartition("/")[0])

    def with_name(self, name: str) -> "S3Path":
        return self.parent / name

    @property
    def prefix(self) -> str:
        """The key prefix of everything "in" this directory."""
        return f"{self.key}/" if self.key else ""


Location = Union[Path, S3Path]


def location(spec: str | os.PathLike | S3Path) -> Location:
    """A user's location as a ``Path`` or an ``S3Path``; StorageError for any other scheme."""
    if isinstance(spec, S3Path):
        return spec
    text = os.fspath(spec)
    m = _SCHEME.match(text)
    if m is None or len(m.group(1)) == 1:  # (a one-letter "scheme" is a Windows drive)
        return Path(text)
    scheme = m.group(1).lower()
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"{text!r}: file:// URLs name this machine's files only (file:///path)")
        return Path(unquote(parts.path))
    if scheme == "s3":
        rest = text[3:].lstrip("/")  # s3://b/p, and s3:/b/p as a Path writes it
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text!r}: an S3 location needs a bucket: s3://bucket/prefix")
        return S3Path(bucket, key.strip("/"))
    raise StorageError(
        f"{text!r}: the {scheme}: scheme is not accepted (a webdataset URL such as pipe:... would run "
        f"a command); give {ALLOWED}"
    )


def as_location(path: str | os.PathLike | S3Path) -> Location:
    """A location already checked by ``location`` (or a name a listing gave): an ``S3Path`` for
    ``s3://`` text, else a local ``Path``, never refused. A file found in a local folder may be
    called ``pipe:x.tar``: it is still a file there, not a URL."""
    if isinstance(path, S3Path):
        return path
    text = os.fspath(path)
    return location(text) if text[:5].lower() == "s3://" else Path(text)


def is_remote(loc: Location | str | os.PathLike) -> bool:
    return isinstance(as_location(loc), S3Path)


def join(directory: str | os.PathLike | S3Path, name: str) -> Location:
    return as_location(directory) / name


# ---------------------------------------------------------------------------------------------
# the client: one per process, from the standard AWS configuration


_CLIENT: dict[int, object] = {}
_CLIENT_LOCK = threading.Lock()
_RETRIES = {"count": 0}


def client():
    """This process's S3 client (made on first use, again after a fork)."""
    pid = os.getpid()
    c = _CLIENT.get(pid)
    if c is None:
        with _CLIENT_LOCK:
            c = _CLIENT.get(pid)
            if c is None:
                c = _CLIENT[pid] = _new_client()
    return c


def _new_client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageError("s3:// locations need boto3: pip install -e '.[s3]'") from None
    # Retries of whole requests are botocore's (standard mode); a body that breaks off mid-read is
    # re-requested by _ObjectReader. The pool holds one connection per reader thread and upload part.
    config = Config(
        retries={"mode": "standard", "max_attempts": 4}, connect_timeout=10, read_timeout=60, max_pool_connections=32
    )
    return boto3.session.Session().client("s3", config=config)


def forget_clients() -> None:
    """Drop this process's client: the next call makes one from the AWS environment as it is now."""
    _CLIENT.pop(os.getpid(), None)


def read_retries() -> int:
    """Transient read errors this process recovered from (or gave up on) so far."""
    return _RETRIES["count"]


_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500", "502", "504"}
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "403",
}


def _code(exc) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _transient(exc: BaseException) -> bool:
    from botocore import exceptions as be

    if isinstance(
        exc, (be.ConnectionError, be.ResponseStreamingError, be.IncompleteReadError, ConnectionError, TimeoutError)
    ):
        return True
    try:
        from urllib3.exceptions import HTTPError as Urllib3Error
    except ImportError:  # pragma: no cover - urllib3 comes with botocore
        Urllib3Error = ()
    if isinstance(exc, Urllib3Error):
        return True
    return isinstance(exc, be.ClientError) and _code(exc) in _TRANSIENT_CODES


def _error(exc: BaseException, loc: S3Path, doing: str) -> StorageError:
    """A botocore failure as one line naming the object and what to do (no credential, no traceback)."""
    from botocore import exceptions as be

    where = loc.url
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError)):
        return StorageError(
            f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE (see docs/object-storage.md)"
        )
    if isinstance(exc, be.ProfileNotFound):
        return StorageError(f"{where}: {exc}; fix AWS_PROFILE or ~/.aws/config")
    if isinstance(exc, be.ClientError):
        code = _code(exc)
        if code in _AUTH_CODES:
            return StorageError(
                f"{where}: the store refused the credentials while {doing} ({code}); check "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket's permissions"
            )
        if code in ("NoSuchBucket",):
            return StorageError(f"{where}: bucket {loc.bucket!r} does not exist; create it or fix the location")
        if code in ("NoSuchKey", "404"):
            return StorageError(f"{where}: no such object")
        return StorageError(f"{where}: {doing} failed ({code or type(exc).__name__}); rerun the same command")
    if _transient(exc):
        endpoint = getattr(getattr(client(), "meta", None), "endpoint_url", "?")
        return StorageError(
            f"{where}: {doing} failed after retries ({type(exc).__name__}); is the store at "
            f"{_no_userinfo(endpoint)} up (AWS_ENDPOINT_URL)? Rerun the same command: it resumes"
        )
    if isinstance(exc, be.BotoCoreError):
        return StorageError(f"{where}: {doing} failed ({type(exc).__name__}: {exc})")
    return StorageError(f"{where}: {doing} failed ({type(exc).__name__}: {exc})")


def _no_userinfo(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", str(url))


@contextlib.contextmanager
def _calling(loc: S3Path, doing: str) -> Iterator[None]:
    from botocore import exceptions as be

    try:
        yield
    except (be.BotoCoreError, be.ClientError) as exc:
        raise _error(exc, loc, doing) from None


def _missing(exc) -> bool:
    return _code(exc) in ("NoSuchKey", "404", "NotFound")


# ---------------------------------------------------------------------------------------------
# operations on either kind of location


@dataclass(frozen=True)
class Entry:
    """One listed object or file: its size and a stamp that changes when it is rewritten
    (the ETag in a store, mtime+size on disk)."""

    size: int
    stamp: str


def exists(loc: Location) -> bool:
    if isinstance(loc, Path):
        return loc.exists()
    from botocore import exceptions as be

    with _calling(loc, "checking"):
        try:
            client().head_object(Bucket=loc.bucket, Key=loc.key)
        except be.ClientError as exc:
            if _missing(exc):
                return False
            raise
    return True


def is_dir(loc: Location) -> bool:
    """A local directory, or a prefix holding at least one object."""
    if isinstance(loc, Path):
        return loc.is_dir()
    with _calling(loc, "listing"):
        page = client().list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix, MaxKeys=1)
    return page.get("KeyCount", 0) > 0


def read_bytes(loc: Location) -> bytes:
    """The whole file; FileNotFoundError when it does not exist (either kind)."""
    if isinstance(loc, Path):
        return loc.read_bytes()
    return read_object(loc)[0]


def read_object(loc: S3Path) -> tuple[bytes, str]:
    """An object's bytes and ETag; FileNotFoundError when it does not exist."""
    from botocore import exceptions as be

    with _calling(loc, "reading"):
        try:
            reply = client().get_object(Bucket=loc.bucket, Key=loc.key)
            return reply["Body"].read(), reply.get("ETag", "")
        except be.ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(loc.url) from None
            raise


class PreconditionFailed(Exception):
    """A conditional write found the object other than required (``if_absent``: it exists;
    ``if_match``: it was rewritten since)."""


def write_bytes(loc: Location, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str:
    """Write a whole file at once: a store replaces the object atomically, a local file is written
    through ``pipeline.atomic``. Conditional (objects only): ``if_absent`` (If-None-Match: *) and
    ``if_match`` (If-Match: ETAG) raise PreconditionFailed when they do not hold. Returns the ETag
    ("" for a local file)."""
    if isinstance(loc, Path):
        from pipeline import atomic

        atomic.write_atomic(loc, data)
        return ""
    from botocore import exceptions as be

    extra = {}
    if if_absent:
        extra["IfNoneMatch"] = "*"
    if if_match:
        extra["IfMatch"] = if_match
    with _calling(loc, "writing"):
        try:
            return client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra).get("ETag", "")
        except be.ClientError as exc:
            # 409 ConditionalRequestConflict: a concurrent conditional write to the same key
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(loc.url) from None
            if if_match and _missing(exc):
                raise PreconditionFailed(loc.url) from None
            raise


def put_file(local: str | os.PathLike, loc: Location) -> None:
    """Copy a local file to ``loc``: an object appears whole or not at all (multipart above
    ``MULTIPART_BYTES``, aborted when a part fails; one that a killed process leaves is removed by
    ``abort_uploads``)."""
    if isinstance(loc, Path):
        from pipeline import atomic

        with atomic.atomic_path(loc) as tmp:
            shutil.copyfile(local, tmp)
        return
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=4)
    with _calling(loc, "uploading"):
        try:
            client().upload_file(os.fspath(local), loc.bucket, loc.key, Config=config)
        except S3UploadFailedError as exc:
            # s3transfer wraps the botocore error; unwrap it for the message
            raise (exc.__context__ or exc) from None


def get_file(loc: Location, local: str | os.PathLike) -> None:
    """Copy ``loc`` to a local file (written whole, then renamed)."""
    from pipeline import atomic

    with atomic.atomic_path(local) as tmp:
        if isinstance(loc, Path):
            shutil.copyfile(loc, tmp)
        else:
            with open_read(loc) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, READ_CHUNK)


def copy(src: Location, dst: Location) -> None:
    """``src`` to ``dst`` within one kind of location (a server-side copy in a store)."""
    if isinstance(src, Path) and isinstance(dst, Path):
        put_file(src, dst)
        return
    if not (isinstance(src, S3Path) and isinstance(dst, S3Path)):
        raise StorageError(f"cannot copy {src} to {dst}: one is local, the other remote")
    from boto3.s3.transfer import TransferConfig

    with _calling(dst, "copying"):
        client().copy(
            {"Bucket": src.bucket, "Key": src.key},
            dst.bucket,
            dst.key,
            Config=TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES),
        )


def remove(loc: Location) -> None:
    """Delete a file or object if it is there."""
    if isinstance(loc, Path):
        from pipeline import atomic

        atomic.remove(loc)
        return
    with _calling(loc, "deleting"):
        client().delete_object(Bucket=loc.bucket, Key=loc.key)


def abort_uploads(loc: S3Path) -> int:
    """Abort the unfinished multipart uploads of the objects whose keys start with ``loc``'s (a
    killed uploader leaves them: invisible, but stored and billed); returns how many."""
    n = 0
    with _calling(loc, "listing uploads"):
        for page in client().get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=loc.key):
            for up in page.get("Uploads", []):
                client().abort_multipart_upload(Bucket=loc.bucket, Key=up["Key"], UploadId=up["UploadId"])
                n += 1
    return n


def list_dir(loc: Location) -> dict[str, Entry]:
    """The files directly in ``loc`` (not below it) by name; {} when it does not exist."""
    if isinstance(loc, Path):
        out = {}
        try:
            with os.scandir(loc) as it:
                for e in it:
                    with contextlib.suppress(OSError):
                        if e.is_file():
                            st = e.stat()
                            out[e.name] = Entry(st.st_size, f"{st.st_mtime_ns}:{st.st_size}")
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return out
    out = {}
    with _calling(loc, "listing"):
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix, Delimiter="/")
        for page in pages:
            for obj in page.get("Contents", []):
                out[obj["Key"][len(loc.prefix) :]] = Entry(int(obj["Size"]), obj.get("ETag", ""))
    return out


def list_tree(loc: S3Path) -> dict[str, Entry]:
    """Every object below ``loc`` by its key relative to it (one listing, 1,000 keys per request)."""
    out = {}
    with _calling(loc, "listing"):
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(loc.prefix) :]] = Entry(int(obj["Size"]), obj.get("ETag", ""))
    return out


def open_read(loc: Location):
    """A binary file object reading ``loc`` from start to end (``_ObjectReader`` for an object)."""
    if isinstance(loc, Path):
        return open(loc, "rb")
    return io.BufferedReader(_ObjectReader(loc), buffer_size=READ_CHUNK)


# ---------------------------------------------------------------------------------------------
# the streaming reader


_EOF = object()


class _ObjectReader(io.RawIOBase):
    """One object, read front to back by a thread that stays up to ``READ_AHEAD`` chunks ahead of
    the consumer (the network overlaps the decoding). A transient failure re-requests the rest of
    the object (``Range``, ``If-Match`` its first ETag: a rewritten object is an error, never a
    splice of two versions) after a backoff; after ``READ_RETRIES`` of them, or at once for a
    permanent one (missing, access denied), the consumer gets one StorageError naming the object."""

    def __init__(self, loc: S3Path):
        super().__init__()
        self.loc = loc
        self._queue: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        self._stop = threading.Event()
        self._chunk, self._at = b"", 0
        self._done = False
        self._thread = threading.Thread(target=self._fetch, name=f"read {loc.url}", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _fetch(self) -> None:
        offset, etag, failures = 0, None, 0
        while not self._stop.is_set():
            body = None
            try:
                extra = {"Range": f"bytes={offset}-", "IfMatch": etag} if etag else {}
                reply = client().get_object(Bucket=self.loc.bucket, Key=self.loc.key, **extra)
                etag = etag or reply.get("ETag")
                body = reply["Body"]
                while not self._stop.is_set():
                    data = body.read(READ_CHUNK)
                    if not data:
                        self._put(_EOF)
                        return
                    offset += len(data)
                    failures = 0  # progress: the retry budget is per stall, not per object
                    if not self._put(data):
                        return
                return
            except Exception as exc:  # noqa: BLE001 - sorted below into retried and final
                transient = _transient(exc) and not _code(exc) == "PreconditionFailed"
                if _missing(exc):  # deleted since it was listed: like a vanished file (a counted skip)
                    self._put(FileNotFoundError(errno.ENOENT, "no such object", self.loc.url))
                    return
                if not transient or failures >= READ_RETRIES:
                    if _code(exc) == "PreconditionFailed":
                        exc = StorageError(f"{self.loc.url}: rewritten while being read; read it again")
                    error = _error(exc, self.loc, f"reading (at byte {offset}, {failures} retries)")
                    self._put(error)
                    return
                failures += 1
                _RETRIES["count"] += 1
                wait = BACKOFF_S * 2 ** (failures - 1)
                log.warning(
                    "%s: %s at byte %d; retry %d/%d in %.1f s",
                    self.loc.url,
                    type(exc).__name__,
                    offset,
                    failures,
                    READ_RETRIES,
                    wait,
                )
                self._stop.wait(wait)
            finally:
                if body is not None:
                    with contextlib.suppress(Exception):
                        body.close()

    def readinto(self, b) -> int:
        if self._done:
            return 0
        if self._at >= len(self._chunk):
            item = self._queue.get()
            if item is _EOF:
                self._done = True
                return 0
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._chunk, self._at = item, 0
        n = min(len(b), len(self._chunk) - self._at)
        b[:n] = self._chunk[self._at : self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            with contextlib.suppress(queue.Empty):
                while True:  # unblock a fetcher waiting on a full queue
                    self._queue.get_nowait()
        super().close()
