"""Resolving fsspec URLs to filesystems, shared by every file source and sink.

Which filesystem a URL gets:

* ``s3://`` and ``s3a://``: s3fs (``pip install 'raystream[s3]'``);
  ``storage_options`` are s3fs's (``key``, ``secret``, ``token``,
  ``client_kwargs={"endpoint_url": ..., "region_name": ...}``...).
* ``gs://`` and ``gcs://``: gcsfs; ``abfs://``, ``abfss://`` and ``az://``:
  adlfs. They are optional: without the package, :func:`url_to_fs` raises a
  :class:`~raystream.errors.PlanError` that says what to ``pip install``.
* ``hdfs://[user@]host[:port]/path``: pyarrow's own
  :class:`pyarrow.fs.HadoopFileSystem` (it needs libhdfs and a JVM on the
  machine), wrapped for fsspec. :func:`hdfs_options` maps the URL and
  ``storage_options`` to its constructor arguments.
* Anything else fsspec knows: local paths, ``file://``, ``memory://``...

Credentials never go into messages: :func:`redact` removes ``user:password@``
and signature-like query parameters from URLs and every value of
``storage_options`` whose key looks like a credential (``key``, ``secret``,
``token``, ``password``...). Errors raised here carry redacted text only, and
drop the original exception from the chain when its text held a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

import fsspec
import pyarrow.fs as pafs

from raystream.errors import PlanError

__all__ = ["hdfs_options", "redact", "secret_values", "shown_url", "to_arrow_fs", "url_to_fs"]

#: The pip package that provides each optional protocol.
_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "az": "adlfs",
}
#: The ``storage_options`` an ``hdfs://`` URL accepts: pyarrow.fs.HadoopFileSystem's arguments.
_HDFS_OPTIONS = ("host", "port", "user", "kerb_ticket", "replication", "extra_conf")
#: Option names whose values are credentials (matched anywhere in the name, any case).
_SECRET_NAME = re.compile(r"key|secret|token|passw|credential|signature|sas|auth|private|connection_string", re.I)
#: Shorter secret values are not searched for in messages: they would match ordinary words.
_MIN_SECRET_CHARS = 4
_URL_PASSWORD = re.compile(r"(?<=://)([^/@:?#]*):[^/@?#]*@")
_URL_SECRET_QUERY = re.compile(r"(?i)([?&](?:sig|signature|token|key|secret|password|x-amz-[a-z-]*)=)[^&#\s'\"]*")
_MASK = "***"
#: The protocols whose fsspec filesystems take a password from the URL and keep it out of their paths.
_URL_PASSWORD_PROTOCOLS = ("ftp", "sftp", "ssh", "smb")
#: Where each protocol takes its credentials instead, for the message that refuses a password in a URL.
_CREDENTIAL_OPTIONS = {
    "s3": "storage_options={'key': ..., 'secret': ...}",
    "s3a": "storage_options={'key': ..., 'secret': ...}",
    "gs": "storage_options={'token': ...}",
    "gcs": "storage_options={'token': ...}",
    "abfs": "storage_options={'account_name': ..., 'account_key': ...}",
    "abfss": "storage_options={'account_name': ..., 'account_key': ...}",
    "az": "storage_options={'account_name': ..., 'account_key': ...}",
    "http": "storage_options={'client_kwargs': {'auth': aiohttp.BasicAuth(user, password)}}",
    "https": "storage_options={'client_kwargs': {'auth': aiohttp.BasicAuth(user, password)}}",
}


def url_to_fs(
    url: str, storage_options: dict[str, Any] | None = None, *, what: str = "path"
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the path inside it.

    Args:
        url: A local path or an fsspec URL (``s3://bucket/prefix``, ``hdfs://namenode:8020/data``...).
        storage_options: Passed to the filesystem (for s3fs: ``key``, ``secret``,
            ``client_kwargs``...). They are never logged or put in errors.
        what: Who asks, for messages (``"read_parquet"``).

    Raises:
        PlanError: The protocol is unknown, its package is not installed (the
            message says what to ``pip install``), or the filesystem refuses
            ``storage_options``.
    """
    options = dict(storage_options or {})
    chain = [_protocol(part) for part in url.split("::")]  # "simplecache::s3://..." chains filesystems.
    protocol = chain[0]
    for part, part_protocol in zip(url.split("::"), chain, strict=True):
        if part_protocol not in (*_URL_PASSWORD_PROTOCOLS, "hdfs") and _URL_PASSWORD.search(part):
            # s3fs, gcsfs, adlfs would take "user:password@bucket" for a bucket name and quote it in their errors;
            # an http(s) path keeps it, and paths reach split ids, metrics and checkpoints.
            where = _CREDENTIAL_OPTIONS.get(part_protocol, "storage_options")
            raise PlanError(
                f"{what}: '{redact(url)}' holds a password, and {part_protocol}:// URLs must not (paths reach logs, "
                f"metrics and checkpoints); give the credentials in {where}"
            )
    try:
        if chain == ["hdfs"]:
            return _hdfs(url, options)
        for protocol in chain:  # Fails fast, before any connection, when a package is missing.
            fsspec.get_filesystem_class(protocol)
        fs, path = fsspec.core.url_to_fs(url, **options)
    except PlanError:
        raise
    except ImportError as exc:
        package = _PACKAGES.get(protocol)
        extra = " (or pip install 'raystream[s3]')" if package == "s3fs" else ""
        install = f"pip install {package}{extra}" if package else "install the fsspec implementation of this protocol"
        _fail(
            f"{what}: '{redact(url)}' needs the package {package or 'for ' + protocol + '://'}, which is not "
            f"installed; {install}",
            exc,
            options,
        )
    except ValueError as exc:
        if "protocol not known" in str(exc).lower():
            _fail(
                f"{what}: '{redact(url)}' has the unknown protocol '{protocol}://'; use a local path or an fsspec URL "
                f"such as s3://, gs://, abfs://, hdfs:// or file://",
                exc,
                options,
            )
        _fail(f"{what}: cannot open '{redact(url)}' ({type(exc).__name__}: {exc}); check storage_options", exc, options)
    except Exception as exc:  # noqa: BLE001 - filesystems raise their own types (botocore, TypeError...).
        hint = (
            "HDFS needs libhdfs and a JVM on this machine (JAVA_HOME, HADOOP_HOME and CLASSPATH from "
            "`hadoop classpath --glob`); check them and storage_options"
            if chain == ["hdfs"]
            else "check storage_options"
        )
        _fail(f"{what}: cannot open '{redact(url)}' ({type(exc).__name__}: {exc}); {hint}", exc, options)
    return fs, path


def hdfs_options(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Map an ``hdfs://`` URL and ``storage_options`` to :class:`pyarrow.fs.HadoopFileSystem` arguments.

    A pure function: nothing connects. ``hdfs://namenode:9000/data`` gives
    host ``namenode`` and port 9000; without a port, 8020 (the NameNode's
    default); without a host (``hdfs:///data``), host ``"default"`` and port
    0, which mean ``fs.defaultFS`` from the Hadoop configuration. A user
    comes from ``hdfs://alice@namenode/...`` or ``?user=alice``; the
    replication from ``?replication=2``. ``storage_options`` may set
    ``host``, ``port``, ``user``, ``kerb_ticket`` (a Kerberos ticket cache
    path), ``replication`` and ``extra_conf`` (a dict of Hadoop settings),
    and win over the URL.

    Returns:
        Keyword arguments for ``HadoopFileSystem`` (and fsspec's wrapper of it).

    Raises:
        PlanError: The URL holds a password (HDFS takes none; use Kerberos),
            or an option is not one of those above.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        raise PlanError(
            f"'{redact(url)}': an hdfs:// URL takes no password; authenticate with Kerberos "
            f"(storage_options={{'kerb_ticket': '/path/to/ticket/cache'}})"
        )
    host = parts.hostname
    options: dict[str, Any] = {"host": host or "default", "port": parts.port or (8020 if host else 0)}
    query = parse_qs(parts.query)
    if parts.username:
        options["user"] = unquote(parts.username)
    elif query.get("user"):
        options["user"] = query["user"][0]
    if query.get("replication"):
        options["replication"] = int(query["replication"][0])
    unknown = sorted(set(storage_options or {}) - set(_HDFS_OPTIONS))
    if unknown:
        raise PlanError(
            f"'{redact(url)}': storage_options {unknown} are not HDFS options; use {', '.join(_HDFS_OPTIONS)}"
        )
    options.update(storage_options or {})
    return options


def to_arrow_fs(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """Wrap an fsspec filesystem for pyarrow; the local one and HDFS map to pyarrow's own."""
    if _is_local(fs):
        return pafs.LocalFileSystem()
    from fsspec.implementations.arrow import ArrowFSWrapper

    if isinstance(fs, ArrowFSWrapper):  # HDFS: fsspec's wrapper of a pyarrow filesystem.
        return fs.fs
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def shown_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of ``path`` in ``fs`` for messages: the plain path when local, else redacted with its protocol."""
    if _is_local(fs):
        return path
    if _protocols(fs)[0] == "hdfs":
        options = getattr(fs, "storage_options", {}) or {}
        host, port = options.get("host"), options.get("port")
        if host and host != "default":
            return f"hdfs://{host}{f':{port}' if port else ''}{path if path.startswith('/') else '/' + path}"
    return redact(fs.unstrip_protocol(path))


def secret_values(storage_options: dict[str, Any] | None) -> list[str]:
    """The credential values in ``storage_options`` (nested too), longest first."""
    found = {value for value in _secrets(storage_options or {}, False) if len(value) >= _MIN_SECRET_CHARS}
    return sorted(found, key=len, reverse=True)


def redact(text: str, storage_options: dict[str, Any] | None = None) -> str:
    """Return ``text`` without URL passwords, signature query parameters and the credentials of ``storage_options``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{_MASK}@", text)
    text = _URL_SECRET_QUERY.sub(lambda m: m.group(1) + _MASK, text)
    for value in secret_values(storage_options):
        text = text.replace(value, _MASK)
    return text


def _secrets(options: Any, inside_secret: bool) -> Iterator[str]:
    if isinstance(options, dict):
        for name, value in options.items():
            yield from _secrets(value, inside_secret or bool(_SECRET_NAME.search(str(name))))
    elif isinstance(options, list | tuple | set):
        for value in options:
            yield from _secrets(value, inside_secret)
    elif isinstance(options, str | bytes) and inside_secret:
        yield options if isinstance(options, str) else options.decode(errors="replace")
    elif isinstance(options, str):
        # A URL among the options (an endpoint) may carry a password of its own.
        match = _URL_PASSWORD.search(options)
        if match:
            yield match.group(0)[len(match.group(1)) + 1 : -1]


def _fail(message: str, cause: BaseException, storage_options: dict[str, Any]) -> NoReturn:
    """Raise a PlanError with ``message`` redacted; keep ``cause`` in the chain only if it held no secret."""
    clean = redact(message, storage_options)
    leaked = clean != message or redact(repr(cause), storage_options) != repr(cause)
    if leaked:
        raise PlanError(clean) from None
    raise PlanError(clean) from cause


def _hdfs(url: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    from fsspec.implementations.arrow import HadoopFileSystem

    fs = HadoopFileSystem(**hdfs_options(url, storage_options))
    return fs, urlsplit(url).path or "/"


def _protocol(url: str) -> str:
    protocol = fsspec.core.split_protocol(url)[0]
    return (protocol or "file").lower()


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return _protocols(fs)[0] in ("file", "local")
