"""What every Kafka client raystream creates shares: its logger, secret-free messages, and waiting out outages.

- **Logs.** librdkafka logs each failed connection attempt (about 20 a second
  while a broker is down). Every Consumer, Producer and AdminClient that
  raystream makes logs through the ``raystream.kafka`` logger instead of
  stderr, with a filter that lets one record of each text through per 10 s
  and says how many like it were held back.
- **Secrets.** The values of credential settings (``sasl.password``,
  ``ssl.key.password``, ``ssl.key.pem``...) are masked in every message
  raystream writes, and in the records of that logger.
- **Outages.** A lost connection is retried with backoff for
  ``reconnect_timeout`` (one minute by default) before anything fails; the
  error then names the brokers and how long they were unreachable.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from raystream._time import Duration, duration_ms
from raystream.errors import PlanError, RaystreamError

__all__ = [
    "DEFAULT_RECONNECT_TIMEOUT",
    "KAFKA_LOG",
    "Outage",
    "RepeatFilter",
    "client_config",
    "is_transport_error",
    "reconnect_timeout_s",
    "redact",
    "retry_transport",
    "unreachable_message",
]

#: How long a job waits for its brokers to come back before it fails.
DEFAULT_RECONNECT_TIMEOUT = "1m"
#: At most one log record of the same text per this many seconds.
LOG_REPEAT_INTERVAL_S = 10.0

_MASK = "***"
#: librdkafka's settings that hold credentials (it marks the same ones sensitive and never logs them).
_SECRET_SETTING = re.compile(r"passw|secret|token|\.pem$|ssl_key|private|oauthbearer\.config|jaas", re.I)
#: Shorter values are not masked in text: they would match ordinary words.
_MIN_SECRET_CHARS = 4
#: What differs between repeats of one message: the client's name, durations, librdkafka's own repeat counts.
_VARYING = re.compile(r"rdkafka#\w+-\d+|\d+(?:\.\d+)?\s*ms\b|\d+ identical error\(s\) suppressed")
_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0

T = TypeVar("T")


class RepeatFilter(logging.Filter):
    """Lets one record of each text through per ``interval_s``; the next one says how many were held back.

    Texts are compared without what changes between repeats (client names,
    "after 0ms"), so a broker that refuses connections is one line per
    interval, however many clients retry. It also masks registered secrets.
    """

    def __init__(self, interval_s: float = LOG_REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # text -> (when it last passed, records held back since)
        self._secrets: set[str] = set()

    def add_secrets(self, values: list[str]) -> None:
        with self._lock:
            self._secrets.update(values)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = _VARYING.sub("#", text)
        now = self.clock()
        with self._lock:
            passed_at, held = self._seen.get(key, (None, 0))
            if passed_at is not None and now - passed_at < self.interval_s:
                self._seen[key] = (passed_at, held + 1)
                return False
            if len(self._seen) > 10_000:  # texts with ever-new parts: forget them rather than grow
                self._seen.clear()
            self._seen[key] = (now, 0)
            secrets = list(self._secrets)
        for secret in secrets:
            text = text.replace(secret, _MASK)
        if held:
            text += f" ({held} more like it in the last {now - passed_at:.0f}s)"  # type: ignore[operator]
        record.msg, record.args = text, None
        return True


#: The logger of librdkafka's own messages, from every client raystream creates. It propagates to ``raystream``.
KAFKA_LOG = logging.getLogger("raystream.kafka")
_FILTER = RepeatFilter()
KAFKA_LOG.addFilter(_FILTER)


def secret_values(config: dict[str, Any] | None) -> list[str]:
    """The values of the credential settings of a librdkafka config, long enough to be searched for."""
    return sorted(
        {
            str(value)
            for name, value in (config or {}).items()
            if _SECRET_SETTING.search(str(name)) and value is not None and len(str(value)) >= _MIN_SECRET_CHARS
        },
        key=len,
        reverse=True,  # longest first, so a secret that contains another is masked whole
    )


def redact(text: str, config: dict[str, Any] | None) -> str:
    """``text`` with the values of ``config``'s credential settings masked."""
    for secret in secret_values(config):
        text = text.replace(secret, _MASK)
    return text


def shown_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """A config for reprs: credential settings masked, callbacks and loggers named by type."""
    shown: dict[str, Any] = {}
    for name, value in (config or {}).items():
        if _SECRET_SETTING.search(str(name)):
            shown[name] = _MASK
        elif callable(value) or isinstance(value, logging.Logger):
            shown[name] = f"<{type(value).__name__}>"
        else:
            shown[name] = value
    return shown


def client_config(base: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
    """A librdkafka config: ``base``, then the user's settings, logging through :data:`KAFKA_LOG`.

    A ``logger`` of the user's own is kept.
    """
    config = {"logger": KAFKA_LOG, **base, **(user or {})}
    _FILTER.add_secrets(secret_values(config))
    return config


def reconnect_timeout_s(value: Duration | None, what: str) -> float:
    """Parse a ``reconnect_timeout`` option: a positive duration.

    Raises:
        PlanError: when it is not one.
    """
    if value is None:
        raise PlanError(f"{what}: reconnect_timeout must be a duration such as '30s' or '5m', got None")
    ms = duration_ms(value, f"{what}: reconnect_timeout")
    if ms <= 0:
        raise PlanError(f"{what}: reconnect_timeout must be positive, got {value!r}")
    return ms / 1000


def is_transport_error(error: Any) -> bool:
    """True for a ``KafkaError`` that a broker coming back can cure: no connection, a timeout, a moved leader."""
    from confluent_kafka import KafkaError

    if error is None or not isinstance(error, KafkaError) or error.fatal():
        return False
    transport = {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
    }
    return error.code() in transport or bool(error.retriable())


def unreachable_message(what: str, bootstrap_servers: str, seconds: float, timeout_s: float, detail: str) -> str:
    """The error of a job whose brokers stayed away for longer than ``reconnect_timeout``."""
    return (
        f"{what}: Kafka at {bootstrap_servers} has been unreachable for {seconds:.0f}s, longer than "
        f"reconnect_timeout={timeout_s:g}s ({detail}); check that the brokers are up and reachable, or raise "
        "reconnect_timeout"
    )


def retry_transport(
    call: Callable[[], T],
    *,
    what: str,
    bootstrap_servers: str,
    timeout_s: float,
    error: type[RaystreamError],
    config: dict[str, Any] | None = None,
) -> T:
    """Run ``call``; while it fails for want of a broker, try again with backoff, for up to ``timeout_s``.

    Raises:
        error: once the brokers have been unreachable for ``timeout_s`` (the
            message names them and for how long), or at once for any other
            Kafka error (redacted).
    """
    from confluent_kafka import KafkaException

    started = time.monotonic()
    delay = _BACKOFF_START_S
    warned = False
    while True:
        try:
            return call()
        except KafkaException as exc:
            cause = exc.args[0] if exc.args else None
            detail = redact(str(cause if cause is not None else exc), config)
            if not is_transport_error(cause):
                raise error(f"{what}: Kafka at {bootstrap_servers} failed: {detail}") from None
            waited = time.monotonic() - started
            if waited + delay > timeout_s:
                raise error(unreachable_message(what, bootstrap_servers, waited, timeout_s, detail)) from None
            if not warned:
                KAFKA_LOG.warning(
                    "%s: Kafka at %s is unreachable (%s); retrying for up to %gs",
                    what,
                    bootstrap_servers,
                    detail,
                    timeout_s,
                )
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)


class Outage:
    """Since when a client has been without its brokers, and the last error saying so.

    librdkafka reconnects by itself and reports lost connections through
    ``error_cb``; a client notes them here, clears them once a broker answers
    again, and fails only once :meth:`seconds` passes its reconnect timeout.
    """

    def __init__(self) -> None:
        self.since: float | None = None
        self.error: str | None = None

    def failed(self, error: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.error = error

    def cleared(self) -> None:
        self.since, self.error = None, None

    def seconds(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since
