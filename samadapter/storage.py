"""Every path is a URI: a local path, ``file://...``, ``s3://...`` or any fsspec URI.

One place turns a URI into a filesystem. An S3-compatible endpoint (MinIO, a local test
server) comes from the standard ``AWS_ENDPOINT_URL`` variable (or
``AWS_ENDPOINT_URL_S3``) and is passed explicitly to both s3fs and pyarrow, since
pyarrow may ignore the variable. Credentials come only from the environment or the
instance role, never from arguments that end up in configs or logs.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import posixpath
import time
import uuid
from typing import Optional, Tuple
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

log = logging.getLogger(__name__)

_S3_SCHEMES = ("s3", "s3a")
S3_MAX_KEY_BYTES = 1024
S3_RETRIES = {"max_attempts": 10, "mode": "adaptive"}  # botocore retry config, for reads, writes and listings


def s3_endpoint() -> Optional[str]:
    """The S3-compatible endpoint from the environment, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def scheme(uri: str) -> str:
    """URI scheme ('' for a plain local path)."""
    parsed = urlparse(str(uri))
    # A Windows drive letter or a bare path has no real scheme.
    return parsed.scheme if len(parsed.scheme) > 1 else ""


def is_local(uri: str) -> bool:
    return scheme(uri) in ("", "file", "local")


def local_path(uri: str) -> str:
    """The filesystem path of a local URI (``file:///x`` -> ``/x``)."""
    if not is_local(uri):
        raise ValueError(f"{uri!r} is not a local path")
    return urlparse(uri).path if scheme(uri) else os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path components onto a URI with '/'."""
    out = str(uri).rstrip("/")
    for p in parts:
        out = out + "/" + str(p).strip("/")
    return out


def fsspec_filesystem(uri: str, anon: bool = False) -> Tuple[fsspec.AbstractFileSystem, str]:
    """URI -> (fsspec filesystem, path within it).

    Args:
        uri: local path or any fsspec URI.
        anon: anonymous access (public buckets), for S3.
    """
    uri = str(uri)
    sch = scheme(uri)
    if sch in _S3_SCHEMES:
        # Adaptive retries (throttling backs off) with more attempts than botocore's default.
        kwargs = {"anon": anon, "config_kwargs": {"retries": dict(S3_RETRIES)}}
        endpoint = s3_endpoint()
        if endpoint:
            kwargs["client_kwargs"] = {"endpoint_url": endpoint}
        fs = fsspec.filesystem("s3", **kwargs)
        return fs, uri.split("://", 1)[1]
    if sch in ("", "file", "local"):
        return fsspec.filesystem("file"), local_path(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def pyarrow_filesystem(uri: str, anon: bool = False) -> Tuple[pafs.FileSystem, str]:
    """URI -> (pyarrow filesystem, path within it), for Parquet I/O and Ray Data."""
    uri = str(uri)
    sch = scheme(uri)
    if sch in _S3_SCHEMES:
        kwargs = {"anonymous": anon}
        endpoint = s3_endpoint()
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1]
    if sch in ("", "file", "local"):
        return pafs.LocalFileSystem(), local_path(uri)
    fs, path = fsspec_filesystem(uri, anon=anon)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def read_bytes(uri: str, anon: bool = False) -> bytes:
    fs, path = fsspec_filesystem(uri, anon=anon)
    with fs.open(path, "rb") as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = fsspec_filesystem(uri)
    return fs.exists(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object whole: no partial file is ever visible under its final name.

    Local files go to a temporary name in the same folder and are renamed. S3 objects are
    one ``PutObject`` (never a multipart upload, whose failed part could leave a published
    object wrong), with adaptive retries; S3 objects are limited to 5 GB this way. A name
    that cannot exist on the target (S3: a key over 1,024 bytes; locally: the OS's limits)
    raises ``OSError(ENAMETOOLONG)``; the temporary name is short, so that whatever fits
    under its final name can be written.
    """
    if scheme(uri) in _S3_SCHEMES:
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        if len(key.encode()) > S3_MAX_KEY_BYTES:
            raise OSError(errno.ENAMETOOLONG, f"S3 keys are at most {S3_MAX_KEY_BYTES} bytes", uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        fs, path = fsspec_filesystem(uri)
        fs.invalidate_cache(path)  # s3fs caches listings and ETags; this write went around it
        return
    fs, path = fsspec_filesystem(uri)
    if is_local(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = posixpath.join(os.path.dirname(path), f".{uuid.uuid4().hex[:16]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with fs.open(path, "wb") as f:
        f.write(data)


def move(src: str, dst: str) -> None:
    """Move one object or file (S3: a server-side copy, then the delete)."""
    if is_local(src):
        os.makedirs(os.path.dirname(local_path(dst)) or ".", exist_ok=True)
        os.replace(local_path(src), local_path(dst))
        return
    fs, path = fsspec_filesystem(src)
    _, dst_path = fsspec_filesystem(dst)
    fs.mv(path, dst_path)
    fs.invalidate_cache()


def size(uri: str) -> int:
    fs, path = fsspec_filesystem(uri)
    return int(fs.size(path))


def remove_tree(uri: str) -> None:
    """Delete everything under a URI prefix (no error when it does not exist)."""
    fs, path = fsspec_filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.invalidate_cache()


def list_files(uri: str) -> list:
    """All files under a prefix, as paths within the filesystem (one listing, no stats)."""
    fs, path = fsspec_filesystem(uri)
    if not fs.exists(path):
        return []
    return sorted(fs.find(path))


def cache_dir() -> str:
    """samadapter's local cache folder (``$XDG_CACHE_HOME/samadapter`` or ``~/.cache/samadapter``)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "samadapter")


def local_copy(uri: str, folder: Optional[str] = None) -> str:
    """A local file path for ``uri``: the file itself when local, else a cached download.

    Remote files are fetched once per machine: concurrent callers (several workers on a
    node) wait on a file lock and then share the same copy.
    """
    if is_local(uri):
        return local_path(uri)
    import fcntl
    import hashlib

    folder = folder or os.path.join(cache_dir(), "downloads")
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + posixpath.basename(uri.rstrip("/"))
    dest = os.path.join(folder, name)
    with open(dest + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a long wait deserves a line
            log.info("waiting for another process on this machine to fetch %s", uri)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(dest):
            fs, path = fsspec_filesystem(uri)
            tmp = f"{dest}.{uuid.uuid4().hex}.part"
            try:
                start = time.monotonic()
                log.info("fetching %s into %s (once per machine)", uri, dest)
                fs.get_file(path, tmp)
                os.replace(tmp, dest)
                log.info("fetched %s: %.0f MB in %.1f s", uri, os.path.getsize(dest) / 1e6, time.monotonic() - start)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    return dest


@functools.lru_cache(maxsize=None)
def _cached_client(endpoint, pid):
    # botocore itself (s3fs's aiobotocore pins its version): boto3 would have to match that pin.
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client("s3", endpoint_url=endpoint, config=Config(retries=dict(S3_RETRIES)))


def s3_client():
    """A botocore S3 client for listings and whole-object writes: the endpoint from ``AWS_ENDPOINT_URL``, credentials
    from the environment or the instance role, adaptive retries (throttling backs off)."""
    return _cached_client(s3_endpoint(), os.getpid())  # one per process (clients are thread-safe)


# ------------------------------------------------------------------ errors users can act on
_CREDENTIALS_HELP = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance "
                     "role / IRSA provides them; AWS_ENDPOINT_URL points at MinIO or another S3-compatible store")


def _chain(exc: BaseException):
    """The exception, its causes and contexts, and a Ray task error's original cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        ray_cause = getattr(exc, "cause", None)  # a Ray task error carries the task's exception
        exc = ray_cause if isinstance(ray_cause, BaseException) else (exc.__cause__ or exc.__context__)


def explain(exc: BaseException) -> Optional[str]:
    """One line saying what went wrong with object storage and what to do, or None when
    ``exc`` is not a storage problem: no credentials, access denied, no such bucket, an
    endpoint that does not answer. The jobs print it and exit with status 2."""
    for e in _chain(exc):
        name, text = type(e).__name__, str(e)
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError") or \
                "Unable to locate credentials" in text:
            return f"no credentials for object storage ({text}): {_CREDENTIALS_HELP}"
        code = ""
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            return f"no such bucket ({text}): check the bucket name and region in the URI"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or isinstance(e, PermissionError) \
                or "AccessDenied" in text or "Forbidden" in text:
            return (f"access denied by object storage ({text}): the credentials in use may not read or write this "
                    f"location; check the bucket policy and the role's permissions ({_CREDENTIALS_HELP})")
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError") \
                or "Could not connect to the endpoint" in text:
            return (f"object storage does not answer ({text}): check AWS_ENDPOINT_URL "
                    f"({s3_endpoint() or 'not set: AWS S3'}) and the network")
    return None
