"""Listing the paths of a file source, its Hive partitions, and the time range they give (plan steps 1-3)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar
from urllib.parse import unquote

import fsspec
import numpy as np
import pyarrow as pa

from raystream._fs import redact, shown_url
from raystream.errors import PlanError

_T = TypeVar("_T")
_R = TypeVar("_R")
#: How many files are inspected at once at plan time (footers, first blocks);
#: on object stores each inspection is a round trip, so they overlap.
_PLAN_THREADS = 16
_GLOB_CHARS = re.compile(r"[*?\[]")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_INTEGER = re.compile(r"^[+-]?\d{1,18}$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$|^(\d{4})(\d{2})(\d{2})$")
_HOUR = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T _-](\d{2})$")
_AUTO_DAY_COLUMNS = ("dt", "date")
_AUTO_HOUR_COLUMN = "hour"
_NS_PER_HOUR = 3_600 * 10**9
_NS_PER_DAY = 24 * _NS_PER_HOUR
#: ``partition_time=``: ``"auto"``, ``None``, a day column, or ``[day, hour]``.
PartitionTime: TypeAlias = "str | Sequence[str] | None"


@dataclass(frozen=True)
class _File:
    """One data file, reopenable in another process.

    It holds no filesystem, so no credentials: a split's payload is stored
    in checkpoints (as JSON). The source keeps the filesystem of each root.

    Attributes:
        root: The index of the path it was found under, in the source's paths.
        path: The path inside that root's filesystem (no protocol).
        label: A short, stable name for split ids: the path relative to the
            root the user gave, or the full URL when several roots were given.
        shown: The full URL without credentials, for messages and metrics.
        size: The size in bytes when the listing reported it.
        partitions: The Hive partition folders between the root and the
            file, as ``(key, value)`` pairs; a value is ``None`` for null.
    """

    root: int
    path: str
    label: str
    shown: str
    size: int | None
    partitions: tuple[tuple[str, str | None], ...] = ()


def _is_hidden(relative: str) -> bool:
    """True when any component of ``relative`` starts with ``.`` or ``_``."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _glob_base(pattern: str) -> str:
    """The directory part of ``pattern`` before its first glob character."""
    match = _GLOB_CHARS.search(pattern)
    prefix = pattern if match is None else pattern[: match.start()]
    return prefix.rsplit("/", 1)[0] if "/" in prefix else ""


def _relative(path: str, base: str) -> str:
    base = base.rstrip("/")
    return path[len(base) + 1 :] if base and path.startswith(base + "/") else path.lstrip("/")


def _check_paths(name: str, urls: Any) -> list[str]:
    roots = [urls] if isinstance(urls, str) else list(urls) if isinstance(urls, list | tuple) else []
    if not roots or not all(isinstance(root, str) and root for root in roots):
        raise PlanError(f"{name}: path must be a non-empty string or a list of them, got {redact(repr(urls))}")
    return roots


# Not ds.HivePartitioning (pyarrow 26): 'k=' stays '' not null, a repeated key is dropped silently, ints are int32.
def _hive_partitions(name: str, shown: str, relative: str) -> tuple[tuple[str, str | None], ...]:
    """The ``key=value`` folders of ``relative`` (a path below the root, ending with the file name)."""
    found: dict[str, str | None] = {}
    for folder in relative.split("/")[:-1]:
        key, equals, value = folder.partition("=")
        if not equals or not key:
            continue  # A folder without '=' is not a partition.
        key, value = unquote(key), unquote(value)
        if key in found:
            raise PlanError(
                f"{name}: '{shown}' is inside two partition folders named '{key}'; rename one, or pass "
                f"partitioning=None to read no columns from folder names"
            )
        found[key] = None if value in ("", _HIVE_NULL) else value
    return tuple(found.items())


def _list(
    name: str,
    urls: Sequence[str],
    filesystems: Sequence[tuple[fsspec.AbstractFileSystem, str]],
    hive: bool,
    allow_empty: bool,
) -> list[_File]:
    """List the data files of every root, in a deterministic order.

    Each root's files are sorted; roots keep the order they were given in and
    a file named twice is kept once.

    Args:
        allow_empty: A root that does not exist or holds no data file yet is
            empty instead of an error (a watched folder).

    Raises:
        FileNotFoundError: A root does not exist or matches no data file.
        PlanError: A root could not be listed.
    """
    files: list[_File] = []
    seen: set[tuple[str, str]] = set()
    for index, (url, (fs, root)) in enumerate(zip(urls, filesystems, strict=True)):
        fs.invalidate_cache()  # A cached listing (s3fs keeps one) would hide files that landed since.
        try:
            found = _list_root(name, url, fs, root)
        except FileNotFoundError:
            if allow_empty:
                continue
            raise
        except Exception as exc:  # noqa: BLE001 - filesystems raise their own types (botocore...): name the path.
            message = (
                f"{name}: cannot list '{redact(url)}' ({type(exc).__name__}: {exc}); "
                f"check the path and storage_options (credentials, region, endpoint)"
            )
            clean = redact(message, fs.storage_options)
            raise PlanError(clean) from (exc if clean == message else None)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for path, relative, size in found:
            if (protocol, path) in seen:
                continue
            seen.add((protocol, path))
            shown = shown_url(fs, path)
            partitions = _hive_partitions(name, shown, relative) if hive else ()
            files.append(_File(index, path, relative if len(urls) == 1 else shown, shown, size, partitions))
    return files


# Not ds.dataset(): its fragments carry no file size (estimated_bytes, empty files, bytes_total), and it has no globs.
def _list_root(name: str, url: str, fs: fsspec.AbstractFileSystem, root: str) -> list[tuple[str, str, int | None]]:
    """Return ``(path, path relative to the root, size)`` of each data file under one root."""
    shown = redact(url)
    try:
        info = fs.info(root)
    except FileNotFoundError:
        info = None
    if info is not None and info.get("type") != "directory":
        return [(root, posixpath.basename(root), info.get("size"))]
    if info is not None:
        found = _data_files_below(fs, root)
        if not found:
            raise FileNotFoundError(
                f"{name}: directory '{shown}' contains no data file (names starting with '.' or '_' "
                f"are ignored); check the path"
            )
        return found
    if _GLOB_CHARS.search(root):
        base = _glob_base(root)
        found = []
        for path, entry in sorted(fs.glob(root, detail=True).items()):
            if _is_hidden(_relative(path, base)):
                continue
            if entry.get("type") == "directory":
                found.extend((sub, _relative(sub, base), size) for sub, _, size in _data_files_below(fs, path))
            else:
                found.append((path, _relative(path, base), entry.get("size")))
        if not found:
            raise FileNotFoundError(
                f"{name}: glob '{shown}' matches no data file (names starting with '.' or '_' are "
                f"ignored); check the pattern or storage_options"
            )
        return found
    raise FileNotFoundError(f"{name}: path '{shown}' does not exist; check the path or storage_options")


def _data_files_below(fs: fsspec.AbstractFileSystem, root: str) -> list[tuple[str, str, int | None]]:
    entries = fs.find(root, detail=True)
    found = []
    for path, entry in sorted(entries.items()):
        relative = _relative(path, root)
        if entry.get("type") != "directory" and not _is_hidden(relative):
            found.append((path, relative, entry.get("size")))
    return found


def _plan_map(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[fn(x) for x in items]``, overlapped on threads; the first error in order is raised."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_PLAN_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def _infer_partition_fields(files: Sequence[_File]) -> list[pa.Field]:
    """One field per partition key, in first-seen order: int64 when every value is an integer, else string."""
    values: dict[str, set[str]] = {}
    for file in files:
        for key, value in file.partitions:
            seen = values.setdefault(key, set())
            if value is not None:
                seen.add(value)
    return [
        pa.field(key, pa.int64() if seen and all(_INTEGER.match(v) for v in seen) else pa.string())
        for key, seen in values.items()
    ]


# Not get_fragments(filter=): a day/hour folder (20260101, 2026-01-01T03) is a time range, not a column's value.
def _partition_range_ns(day: str | None, hour: str | None) -> tuple[int, int] | None:
    """``[start, end)`` in epoch ns of a day (or hour) partition value and an optional hour value.

    Returns ``None`` when the day is null. Raises ``ValueError`` when a value is not a day, an hour or 0-23.
    """
    if day is None:
        return None
    match = _HOUR.match(day)
    if match:
        year, month, dom, start_hour = match.groups()
        width = _NS_PER_HOUR
        if hour is not None:
            raise ValueError(f"'{day}' is already an hour, so the hour partition is redundant")
    else:
        match = _DAY.match(day)
        if match is None:
            raise ValueError(f"'{day}' is not a day (2026-01-01, 20260101) or an hour (2026-01-01T03)")
        year, month, dom = (g for g in match.groups() if g is not None)
        start_hour, width = "0", _NS_PER_DAY
    if int(start_hour) > 23:
        raise ValueError(f"'{day}' has an hour past 23")
    start = int(np.datetime64(f"{year}-{month}-{dom}", "D").astype("datetime64[ns]").astype(np.int64))
    start += int(start_hour) * _NS_PER_HOUR
    if hour is not None:
        if not _INTEGER.match(hour) or not 0 <= int(hour) <= 23:
            raise ValueError(f"hour '{hour}' is not 0-23")
        start, width = start + int(hour) * _NS_PER_HOUR, _NS_PER_HOUR
    return start, start + width


def _partition_keys(files: Sequence[_File]) -> list[str]:
    return list(dict.fromkeys(key for file in files for key, _ in file.partitions))


def _check_partition_time(name: str, value: Any, time_column: str | None) -> tuple[str, ...] | str | None:
    if value is None or value == "auto":
        return value  # type: ignore[no-any-return]
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list | tuple) else None
    if not names or len(names) > 2 or not all(isinstance(n, str) and n for n in names):
        raise PlanError(
            f"{name}: partition_time must be 'auto', None, a partition column (the day) or a list of two (the "
            f"day and the hour), got {value!r}"
        )
    if time_column is None:
        raise PlanError(f"{name}: partition_time= maps folders to event time, so it needs time_column=")
    return names
