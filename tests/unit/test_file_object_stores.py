"""Object-store URLs: which filesystem a URL gets (HDFS without a cluster), missing packages, and no leaked secrets."""

from __future__ import annotations

import importlib.util
import json
import pickle
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.arrow import HadoopFileSystem as FsspecHadoop
from fsspec.implementations.memory import MemoryFileSystem

from raystream._fs import hdfs_options, redact, secret_values, shown_url, to_arrow_fs, url_to_fs
from raystream.errors import PlanError, RaystreamError
from raystream.sources.files import CsvSource, ParquetSource

SECRETS = {"key": "AKIAEXAMPLEKEY", "secret": "s3cr3t-value-42", "client_kwargs": {"aws_session_token": "tok-987654"}}
SECRET_TEXTS = ["AKIAEXAMPLEKEY", "s3cr3t-value-42", "tok-987654"]


def assert_no_secret(error: BaseException, *texts: str) -> None:
    shown = [str(error), repr(error), "".join(traceback.format_exception(error))]
    for text in [*SECRET_TEXTS, *texts]:
        for view in shown:
            assert text not in view, view


# --------------------------------------------------------------------------- #
# HDFS: the URL picks pyarrow's HadoopFileSystem; nothing connects here        #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        ("hdfs://namenode:9000/data/events", None, {"host": "namenode", "port": 9000}),
        ("hdfs://namenode/data", None, {"host": "namenode", "port": 8020}),
        ("hdfs:///data", None, {"host": "default", "port": 0}),
        (
            "hdfs://alice@nn.example.com:8020/x?replication=2",
            {"kerb_ticket": "/tmp/krb5cc", "extra_conf": {"dfs.client.use.datanode.hostname": "true"}},
            {
                "host": "nn.example.com",
                "port": 8020,
                "user": "alice",
                "replication": 2,
                "kerb_ticket": "/tmp/krb5cc",
                "extra_conf": {"dfs.client.use.datanode.hostname": "true"},
            },
        ),
        ("hdfs://nn:8020/x?user=bob", {"port": 9820}, {"host": "nn", "port": 9820, "user": "bob"}),
    ],
)
def test_hdfs_url_maps_to_hadoop_filesystem_arguments(
    url: str, options: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    assert hdfs_options(url, options) == expected


def test_hdfs_options_refuse_passwords_and_unknown_options() -> None:
    with pytest.raises(PlanError, match=r"takes no password.*kerb_ticket") as caught:
        hdfs_options("hdfs://alice:hunter22@nn/x")
    assert "hunter22" not in str(caught.value)
    with pytest.raises(PlanError, match=r"storage_options \['key'\] are not HDFS options"):
        hdfs_options("hdfs://nn/x", {"key": "v"})


class _FakeHadoop:
    """Stands in for pyarrow.fs.HadoopFileSystem, which needs a JVM and a cluster."""

    type_name = "hdfs"
    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        _FakeHadoop.made.append(kwargs)


@pytest.fixture
def fake_hadoop(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    _FakeHadoop.made = []
    monkeypatch.setattr(pafs, "HadoopFileSystem", _FakeHadoop)
    FsspecHadoop.clear_instance_cache()
    yield _FakeHadoop.made
    FsspecHadoop.clear_instance_cache()


def test_hdfs_url_builds_pyarrow_hadoop_filesystem(fake_hadoop: list[dict[str, Any]]) -> None:
    fs, path = url_to_fs("hdfs://alice@namenode:9000/data/events/", {"kerb_ticket": "/tmp/krb5cc"})
    assert fake_hadoop == [
        {
            "host": "namenode",
            "port": 9000,
            "user": "alice",
            "kerb_ticket": "/tmp/krb5cc",
            "replication": 3,
            "extra_conf": None,
        }
    ]
    assert isinstance(fs, FsspecHadoop) and path == "/data/events/"
    assert isinstance(to_arrow_fs(fs), _FakeHadoop)  # pyarrow reads HDFS natively, not through fsspec.
    assert shown_url(fs, "/data/events/a.parquet") == "hdfs://namenode:9000/data/events/a.parquet"


def test_hdfs_without_a_jvm_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoJvm:
        def __init__(self, **kwargs: Any) -> None:
            raise OSError("Unable to load libjvm")

    monkeypatch.setattr(pafs, "HadoopFileSystem", NoJvm)
    FsspecHadoop.clear_instance_cache()
    with pytest.raises(PlanError, match=r"cannot open 'hdfs://nn:8020/x' .*libjvm.*needs libhdfs and a JVM"):
        ParquetSource("hdfs://nn:8020/x")


# --------------------------------------------------------------------------- #
# Optional packages and unknown protocols                                     #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(("url", "package"), [("gs://bucket/events/", "gcsfs"), ("abfs://container/events/", "adlfs")])
def test_missing_object_store_package_is_named(url: str, package: str) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(PlanError, match=rf"read_parquet: '{url}' needs the package {package}.*pip install {package}"):
        ParquetSource(url, storage_options={"token": "tok-987654"})


def test_missing_s3fs_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(protocol: str) -> type:
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(PlanError, match=r"read_csv: 's3://b/x' needs the package s3fs.*raystream\[s3\]"):
        CsvSource("s3://b/x")


def test_unknown_protocol() -> None:
    with pytest.raises(PlanError, match=r"'nope://x/y' has the unknown protocol 'nope://'"):
        ParquetSource("nope://x/y")


# --------------------------------------------------------------------------- #
# Credentials stay out of messages, reprs and checkpoints                     #
# --------------------------------------------------------------------------- #


class LeakyFileSystem(MemoryFileSystem):
    """A memory filesystem whose errors quote its own storage options, like a careless driver would."""

    protocol = "leaky"
    fail: str | None = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("leaky://"))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        if LeakyFileSystem.fail == "list":
            raise PermissionError(f"access denied for {self.storage_options!r}")
        return super().info(path, **kwargs)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if LeakyFileSystem.fail == "open" and "r" in mode:
            raise PermissionError(f"cannot open {path} with {self.storage_options!r}")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def leaky_root() -> Iterator[str]:
    fsspec.register_implementation("leaky", LeakyFileSystem, clobber=True)
    folder = f"/leaky-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    with memory.open(f"{folder}/dt=2026-01-01/a.parquet", "wb") as f:
        pq.write_table(pa.table({"x": [1, 2, 3]}), f)
    yield f"leaky://{folder}"
    LeakyFileSystem.fail = None
    memory.rm(folder, recursive=True)


def test_secrets_are_absent_from_errors_reprs_and_checkpointed_splits(leaky_root: str) -> None:
    source = ParquetSource(leaky_root, storage_options=SECRETS)
    splits = source.splits(1)
    for text in [repr(source), repr(splits), str(source.files())]:
        assert not any(secret in text for secret in SECRET_TEXTS), text
    # The split list goes into the checkpoint (as JSON), and to the readers pickled: neither may carry credentials.
    encoded = json.dumps([source.encode_split(split) for split in splits]).encode()
    pickled = pickle.dumps(splits)
    assert not any(secret.encode() in data for secret in SECRET_TEXTS for data in (encoded, pickled))

    LeakyFileSystem.fail = "list"
    with pytest.raises(PlanError, match=r"read_parquet: cannot list 'leaky://.*' \(PermissionError: access") as listed:
        ParquetSource(leaky_root, storage_options=SECRETS)
    assert "***" in str(listed.value)
    assert_no_secret(listed.value)

    LeakyFileSystem.fail = "open"
    with pytest.raises(PlanError, match=r"cannot read the Parquet footer of 'leaky://.*a\.parquet'") as footer:
        ParquetSource(leaky_root, storage_options=SECRETS)
    assert_no_secret(footer.value)

    reader = source.open_split(splits[0], None)  # Planned fine; the file becomes unreadable mid-run.
    with pytest.raises(RaystreamError, match=r"read_parquet: cannot read 'leaky://.*a\.parquet' after row 0") as read:
        reader.next_batch(10)
    assert_no_secret(read.value)


#: One URL with a password per scheme whose filesystem would keep it (in a bucket name or in its paths).
PASSWORD_URLS = [
    "s3://AKIAURLUSER:{pw}@bucket/in",
    "s3a://AKIAURLUSER:{pw}@bucket/in",
    "gs://user:{pw}@bucket/in",
    "gcs://user:{pw}@bucket/in",
    "abfs://account:{pw}@container/in",
    "az://account:{pw}@container/in",
    "https://user:{pw}@127.0.0.1:1/in.parquet",
    "http://user:{pw}@127.0.0.1:1/in.parquet",
    "memory://user:{pw}@/in",
    "file://user:{pw}@/tmp/in",
    "simplecache::s3://AKIAURLUSER:{pw}@bucket/in",
]


@pytest.mark.parametrize("url", PASSWORD_URLS, ids=lambda url: url.split("://")[0])
@pytest.mark.parametrize("where", ["read_parquet", "read_csv", "read_json", "write_parquet"])
def test_a_password_in_a_url_is_refused_at_plan_time_without_showing_it(url: str, where: str) -> None:
    import pandas as pd

    import raystream as rs

    password = "pw-" + "9f3kq77"  # Not one literal: tracebacks quote the raising line.
    url = url.format(pw=password)
    with pytest.raises(PlanError, match=r"holds a password.*give the credentials in storage_options") as caught:
        if where == "write_parquet":
            rs.from_pandas(pd.DataFrame({"x": [1]})).write_parquet(url)
        else:
            getattr(rs, where)(url)
    assert "***" in str(caught.value)
    assert_no_secret(caught.value, password)


def test_source_and_sink_configs_show_no_credentials() -> None:
    from raystream.config import SinkConfig, SourceConfig

    files = SourceConfig(kind="parquet", path="ftp://u:pw-in-url-1@host/x", storage_options={"password": "pw-opt-22"})
    kafka = SourceConfig(kind="kafka", topics=["t"], consumer_config={"sasl.password": "pw-sasl-333"})
    hybrid = SourceConfig(kind="hybrid", history=files, live=kafka, switch_at="2026-01-01T00:00:00Z")
    sink = SinkConfig(kind="parquet", path="out", storage_options={"secret": "pw-sink-4444"})
    for text in (repr(files), repr(kafka), repr(hybrid), repr(sink)):
        assert not any(pw in text for pw in ("pw-in-url-1", "pw-opt-22", "pw-sasl-333", "pw-sink-4444")), text
    assert "ftp://u:***@host/x" in repr(hybrid)


def test_url_passwords_are_redacted() -> None:
    url = "ftp://user:" + "hunter22" + "@127.0.0.1:1/x"  # Not one literal: tracebacks quote the raising line.
    with pytest.raises(PlanError, match=r"ftp://user:\*\*\*@127\.0\.0\.1:1/x") as caught:
        ParquetSource(url)
    assert_no_secret(caught.value, "hunter22")
    assert redact("s3://k:pw1234@bucket/x and https://a.blob/x?sv=1&sig=abcd%2F&se=2") == (
        "s3://k:***@bucket/x and https://a.blob/x?sv=1&sig=***&se=2"
    )
    assert redact("boom tok-987654 AKIAEXAMPLEKEY region us-east-1", SECRETS) == "boom *** *** region us-east-1"
    options = {"anon": False, "client_kwargs": {"endpoint_url": "http://u:pw-endpoint@host:9000"}, "password": "abc"}
    assert secret_values(options) == ["pw-endpoint"]  # Values under 4 characters would match ordinary words.
