"""Nexmark's online-auction events, generated vectorized, and a replayable source over them.

Event number ``e`` (0, 1, 2...) is a Person, an Auction or a Bid by ``e % 50``
(1 : 3 : 46), at event time ``base + e * (1e6 / rate) / 1000`` ms. Every value
of an event is drawn from counter-based random numbers, SplitMix64 of
``(seed, e, draw)``, so an event depends on the seed and its own number
alone: any range ``[a, b)`` of event numbers can be generated on its own and
gives exactly the rows that generating everything gives there. That is what
makes :class:`NexmarkSource` replayable from any position.

The draws follow the Nexmark generator (Beam's and Flink's): ids start at
1,000; a bid goes to the hot auction (the latest auction id rounded down to
a multiple of 2) with probability 1/2, else uniformly to one of the last 100
auctions plus a lead of 10; its bidder is the hot person (the last person id
rounded down to a multiple of 4, plus 1) with probability 3/4, else one of
the last 1,000 people plus a lead of 10; prices are
``round(10 ** (6 * U) * 100)``; ``extra`` pads a bid to about 100 bytes, an
auction to 500 and a person to 200.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

from raystream.errors import PlanError
from raystream.sources.base import ReplayError, Source, Split, SplitReader

Kind = Literal["bid", "auction", "person"]
KINDS: tuple[Kind, ...] = ("bid", "auction", "person")

#: Events come in runs of 50: one person (offset 0), three auctions (1 to 3), 46 bids (4 to 49).
PROPORTION_DENOMINATOR = 50
_OFFSETS: dict[str, tuple[int, int]] = {"person": (0, 1), "auction": (1, 4), "bid": (4, 50)}
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
NUM_IN_FLIGHT_AUCTIONS = 100
NUM_ACTIVE_PEOPLE = 1000
AUCTION_ID_LEAD = 10
PERSON_ID_LEAD = 10
HOT_AUCTION_RATIO = 2
HOT_BIDDER_RATIO = 4
HOT_SELLER_RATIO = 4
#: The average size in bytes that ``extra`` pads each kind of record to.
AVERAGE_BYTES: dict[str, int] = {"person": 200, "auction": 500, "bid": 100}
#: 2026-01-01T00:00:00Z, a multiple of every window size, so windows line up with the first event.
DEFAULT_BASE_TIME_MS = 1_767_225_600_000
DEFAULT_RATE = 10_000

_TIME = pa.timestamp("ms")
SCHEMAS: dict[str, pa.Schema] = {
    "bid": pa.schema(
        [
            ("auction", pa.int64()),
            ("bidder", pa.int64()),
            ("price", pa.int64()),
            ("channel", pa.string()),
            ("url", pa.string()),
            ("date_time", _TIME),
            ("extra", pa.string()),
        ]
    ),
    "auction": pa.schema(
        [
            ("id", pa.int64()),
            ("item_name", pa.string()),
            ("description", pa.string()),
            ("initial_bid", pa.int64()),
            ("reserve", pa.int64()),
            ("date_time", _TIME),
            ("expires", _TIME),
            ("seller", pa.int64()),
            ("category", pa.int64()),
            ("extra", pa.string()),
        ]
    ),
    "person": pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("email_address", pa.string()),
            ("credit_card", pa.string()),
            ("city", pa.string()),
            ("state", pa.string()),
            ("date_time", _TIME),
            ("extra", pa.string()),
        ]
    ),
}

_HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
_NUM_CHANNELS = 10_000
_FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
_LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
_CITIES = (
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
)
_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")

#: Generated tables are built this many events at a time, to bound the memory of one step.
_CHUNK_EVENTS = 1 << 20
#: The most events one batch of the source spans, whatever ``max_rows`` allows.
_MAX_BATCH_EVENTS = 1 << 21


def _check_kind(kind: str, what: str) -> None:
    if kind not in _OFFSETS:
        raise PlanError(f"{what}: kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")


# -- which events are which -----------------------------------------------------------


def kind_mask(kind: Kind, events: np.ndarray) -> np.ndarray:
    """True where event number ``events`` is of ``kind``."""
    low, high = _OFFSETS[kind]
    offset = np.asarray(events) % PROPORTION_DENOMINATOR
    return (offset >= low) & (offset < high)


def _count_below(kind: Kind, stop: int) -> int:
    low, high = _OFFSETS[kind]
    runs, offset = divmod(max(stop, 0), PROPORTION_DENOMINATOR)
    return runs * (high - low) + min(max(offset - low, 0), high - low)


def count_events(kind: Kind, start: int, stop: int) -> int:
    """How many of the event numbers ``[start, stop)`` are of ``kind`` (closed form, no generation)."""
    _check_kind(kind, "count_events")
    return max(_count_below(kind, stop) - _count_below(kind, start), 0)


def events_for(kind: Kind, rows: int) -> int:
    """The smallest number of events whose ``kind`` rows number ``rows``: ``events_for("bid", 2_000_000)``."""
    _check_kind(kind, "events_for")
    low, high = _OFFSETS[kind]
    if rows <= 0:
        return 0
    runs, rest = divmod(rows, high - low)
    if rest == 0:
        return (runs - 1) * PROPORTION_DENOMINATOR + high
    return runs * PROPORTION_DENOMINATOR + low + rest


def _last_person0(events: np.ndarray) -> np.ndarray:
    """The base-0 id of the last person created at or before each event."""
    return events // PROPORTION_DENOMINATOR


def _last_auction0(events: np.ndarray) -> np.ndarray:
    """The base-0 id of the last auction created at or before each event (-1 before the first)."""
    run, offset = np.divmod(events, PROPORTION_DENOMINATOR)
    return np.where(offset < 1, run * 3 - 1, run * 3 + np.minimum(offset - 1, 2))


# -- counter-based random numbers ----------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
#: Independent 64-bit draws reserved for each event number.
_DRAWS_PER_EVENT = 8
_POOL_BITS = 20


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijection of uint64 that scrambles every bit (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=64)
def _seed_key(seed: int) -> np.uint64:
    return np.uint64(_mix(np.array([seed % 2**64], dtype=np.uint64))[0])


def _pick(bits: np.ndarray, shift: int, n: np.ndarray | int, width: int = 24) -> np.ndarray:
    """Uniform ints in ``[0, n)`` from ``width`` bits of ``bits`` at ``shift`` (multiply-shift, bias < n / 2**width)."""
    chunk = (bits >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    return ((chunk * np.asarray(n).astype(np.uint64)) >> np.uint64(width)).astype(np.int64)


def _unit(bits: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from the top 53 bits."""
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _prices(bits: np.ndarray) -> np.ndarray:
    """Nexmark's log-uniform prices: ``round(10 ** (6 * U) * 100)``, rounding half up as Java does."""
    return np.floor(np.power(10.0, 6.0 * _unit(bits)) * 100.0 + 0.5).astype(np.int64)


@lru_cache(maxsize=8)
def _letter_pool(key: int) -> np.ndarray:
    """2**20 (plus a tail) random lowercase letters: every generated text is a slice of this pool."""
    positions = np.arange((1 << _POOL_BITS) + 1024, dtype=np.uint64)
    bits = _mix(np.uint64(key) ^ np.uint64(0x5BD1E9955BD1E995) + positions * _GOLDEN)
    return (_pick(bits, 40, 26, width=16) + ord("a")).astype(np.uint8)


def _pool_text(pool: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Strings ``pool[start : start + length]``, built as one Arrow buffer without a loop over rows."""
    count = len(lengths)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    longest = int(lengths.max()) if count else 0
    if longest == 0:
        data = np.zeros(0, dtype=np.uint8)
    else:
        windows = sliding_window_view(pool, longest)[starts]  # (rows, longest), a copy of the slices
        data = windows[np.arange(longest)[None, :] < lengths[:, None]]
    if offsets[-1] >= 2**31:  # pragma: no cover - generation works in chunks far below this
        raise ValueError("a generated text column is over 2 GiB; generate fewer events at a time")
    return pa.StringArray.from_buffers(count, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))


def _extra_lengths(bits: np.ndarray, shift: int, current: np.ndarray, average: int) -> np.ndarray:
    """Nexmark's ``nextExtra`` sizes: what pads ``current`` bytes to ``average``, give or take 20%."""
    desired = np.maximum(average - current, 0)
    delta = np.floor(desired * 0.2 + 0.5).astype(np.int64)
    spread = _pick(bits, shift, np.maximum(2 * delta, 1), width=16) * (delta > 0)
    return desired - delta + spread


@lru_cache(maxsize=1)
def _channels() -> tuple[pa.Array, pa.Array]:
    """Every channel and its url: the four hot channels, then ``channel-0`` to ``channel-9999``."""
    numbers = pc.cast(pa.array(np.arange(_NUM_CHANNELS)), pa.string())
    hot = pa.array(_HOT_CHANNELS)
    names = pa.concat_arrays([hot, pc.binary_join_element_wise("channel-", numbers, "")])
    hot_urls = pc.binary_join_element_wise("https://www.nexmark.com/", pc.utf8_lower(hot), "/item.htm?query=1", "")
    urls = pc.binary_join_element_wise("https://www.nexmark.com/channel/item.htm?query=1&channel_id=", numbers, "")
    return names, pa.concat_arrays([hot_urls, urls])


@lru_cache(maxsize=1)
def _names() -> pa.Array:
    firsts = pa.array(np.repeat(np.array(_FIRST_NAMES, dtype=object), len(_LAST_NAMES)), pa.string())
    lasts = pa.array(np.tile(np.array(_LAST_NAMES, dtype=object), len(_FIRST_NAMES)), pa.string())
    return pc.binary_join_element_wise(firsts, lasts, " ")


def _lengths(array: pa.Array) -> np.ndarray:
    return np.asarray(pc.binary_length(array), dtype=np.int64)


# -- the generator --------------------------------------------------------------------------


@dataclass(frozen=True)
class NexmarkGenerator:
    """Nexmark events as Arrow tables, a deterministic function of ``(seed, event number)``.

    Attributes:
        seed: Selects the random draws; the same seed gives the same events.
        rate: Events per second of event time.
        base_time_ms: The event time of event 0, in epoch milliseconds.

    Example:
        >>> gen = NexmarkGenerator(seed=1)
        >>> bids = gen.table("bid", 0, 1_000)
        >>> bids.num_rows, bids.column_names[:3]
        (920, ['auction', 'bidder', 'price'])
        >>> gen.table("bid", 500, 1_000).equals(bids.slice(460))
        True
    """

    seed: int = 0
    rate: float = DEFAULT_RATE
    base_time_ms: int = DEFAULT_BASE_TIME_MS

    def __post_init__(self) -> None:
        if not isinstance(self.rate, (int, float)) or isinstance(self.rate, bool) or not self.rate > 0:
            raise PlanError(f"nexmark: rate must be a positive number of events per second, got {self.rate!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise PlanError(f"nexmark: seed must be an int, got {self.seed!r}")

    @property
    def _key(self) -> np.uint64:
        return _seed_key(int(self.seed))

    def _draw(self, events: np.ndarray, draw: int) -> np.ndarray:
        counter = events.astype(np.uint64) * np.uint64(_DRAWS_PER_EVENT) + np.uint64(draw)
        return _mix(self._key + counter * _GOLDEN)

    def _text(self, events: np.ndarray, draw: int, lengths: np.ndarray) -> pa.Array:
        starts = (self._draw(events, draw) >> np.uint64(64 - _POOL_BITS)).astype(np.int64)
        return _pool_text(_letter_pool(int(self._key)), starts, lengths)

    def event_time_ms(self, events: np.ndarray | int) -> np.ndarray:
        """The event time of each event number: ``base + e * (1e6 / rate) / 1000`` ms, rounded down."""
        events = np.asarray(events, dtype=np.int64)
        delay_us = 1e6 / self.rate
        if delay_us == int(delay_us):  # exact integer arithmetic for the usual rates
            return self.base_time_ms + (events * int(delay_us)) // 1000
        return self.base_time_ms + np.floor(events * (delay_us / 1000.0)).astype(np.int64)

    def events_until(self, time_ms: int) -> int:
        """How many events (from event 0) have an event time at or before ``time_ms``."""
        guess = max(int((time_ms - self.base_time_ms + 1) * self.rate / 1000), 0)
        # A float estimate, corrected to the exact boundary in a step or two.
        while guess > 0 and int(self.event_time_ms(guess - 1)) > time_ms:
            guess -= 1
        while int(self.event_time_ms(guess)) <= time_ms:
            guess += 1
        return guess

    def table(self, kind: Kind, start: int, stop: int) -> pa.Table:
        """The rows of ``kind`` among event numbers ``[start, stop)``, in event order."""
        _check_kind(kind, "NexmarkGenerator.table")
        if start < 0 or stop < start:
            raise ValueError(f"NexmarkGenerator.table: need 0 <= start <= stop, got [{start}, {stop})")
        chunks = []
        for first in range(start, stop, _CHUNK_EVENTS):  # one step per million events, not per row
            events = np.arange(first, min(first + _CHUNK_EVENTS, stop), dtype=np.int64)
            chunks.append(self.rows(kind, events[kind_mask(kind, events)]))
        if not chunks:
            return SCHEMAS[kind].empty_table()
        return pa.concat_tables(chunks)

    def rows(self, kind: Kind, events: np.ndarray) -> pa.Table:
        """The rows of the given event numbers, which must all be of ``kind``."""
        events = np.asarray(events, dtype=np.int64)
        if kind == "bid":
            return self._bids(events)
        if kind == "auction":
            return self._auctions(events)
        return self._persons(events)

    def _timestamps(self, millis: np.ndarray) -> pa.Array:
        return pa.array(millis, pa.int64()).cast(_TIME)

    def _bids(self, events: np.ndarray) -> pa.Table:
        ids = self._draw(events, 0)
        last_auction = _last_auction0(events)
        earliest = np.maximum(last_auction - NUM_IN_FLIGHT_AUCTIONS, 0)
        cold_auction = earliest + _pick(ids, 8, last_auction - earliest + 1 + AUCTION_ID_LEAD)
        hot_auction = (last_auction // HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        is_hot_auction = _pick(ids, 0, HOT_AUCTION_RATIO, width=8) > 0
        auction = np.where(is_hot_auction, hot_auction, cold_auction) + FIRST_AUCTION_ID

        people = _last_person0(events) + 1
        active = np.minimum(people, NUM_ACTIVE_PEOPLE)
        cold_bidder = people - active + _pick(ids, 32, active + PERSON_ID_LEAD)
        hot_bidder = ((people - 1) // HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        is_hot_bidder = _pick(ids, 56, HOT_BIDDER_RATIO, width=8) > 0
        bidder = np.where(is_hot_bidder, hot_bidder, cold_bidder) + FIRST_PERSON_ID

        price = _prices(self._draw(events, 1))

        other = self._draw(events, 2)
        hot_channel = _pick(other, 0, 100, width=16) > 0
        channel_index = np.where(
            hot_channel, _pick(other, 16, len(_HOT_CHANNELS), width=8), len(_HOT_CHANNELS) + _pick(other, 24, 10_000)
        )
        names, urls = _channels()
        channel_take = pa.array(channel_index)
        # auction, bidder, price and date_time: four 8-byte fields, as Nexmark counts a bid's size.
        extra = self._text(events, 3, _extra_lengths(other, 48, np.full(len(events), 32), AVERAGE_BYTES["bid"]))
        return pa.Table.from_arrays(
            [
                pa.array(auction),
                pa.array(bidder),
                pa.array(price),
                names.take(channel_take),
                urls.take(channel_take),
                self._timestamps(self.event_time_ms(events)),
                extra,
            ],
            schema=SCHEMAS["bid"],
        )

    def _auctions(self, events: np.ndarray) -> pa.Table:
        ids = self._draw(events, 0)
        people = _last_person0(events) + 1
        active = np.minimum(people, NUM_ACTIVE_PEOPLE)
        cold_seller = people - active + _pick(ids, 8, active + PERSON_ID_LEAD)
        hot_seller = ((people - 1) // HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        is_hot_seller = _pick(ids, 0, HOT_SELLER_RATIO, width=8) > 0
        seller = np.where(is_hot_seller, hot_seller, cold_seller) + FIRST_PERSON_ID
        category = FIRST_CATEGORY_ID + _pick(ids, 32, NUM_CATEGORIES, width=16)

        initial_bid = _prices(self._draw(events, 1))
        reserve = initial_bid + _prices(self._draw(events, 2))

        times = self.event_time_ms(events)
        # An auction runs for up to twice the time in which NUM_IN_FLIGHT_AUCTIONS more auctions start.
        horizon = self.event_time_ms(events + (NUM_IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR) // 3) - times
        sizes = self._draw(events, 3)
        expires = times + 1 + _pick(sizes, 0, np.maximum(2 * horizon, 1), width=32)
        item_name = self._text(events, 4, 3 + _pick(sizes, 32, 17, width=8))
        description = self._text(events, 5, 3 + _pick(sizes, 40, 97, width=8))
        current = 8 + _lengths(item_name) + _lengths(description) + 8 * 5
        extra = self._text(events, 6, _extra_lengths(sizes, 48, current, AVERAGE_BYTES["auction"]))
        return pa.Table.from_arrays(
            [
                pa.array(_last_auction0(events) + FIRST_AUCTION_ID),
                item_name,
                description,
                pa.array(initial_bid),
                pa.array(reserve),
                self._timestamps(times),
                self._timestamps(expires),
                pa.array(seller),
                pa.array(category),
                extra,
            ],
            schema=SCHEMAS["auction"],
        )

    def _persons(self, events: np.ndarray) -> pa.Table:
        picks = self._draw(events, 0)
        name = _names().take(
            pa.array(_pick(picks, 0, len(_FIRST_NAMES), 16) * len(_LAST_NAMES) + _pick(picks, 16, len(_LAST_NAMES), 16))
        )
        city = pa.array(_CITIES).take(pa.array(_pick(picks, 32, len(_CITIES), 16)))
        state = pa.array(_STATES).take(pa.array(_pick(picks, 48, len(_STATES), 16)))

        digits = self._draw(events, 1)
        groups = [
            pc.utf8_lpad(pc.cast(pa.array(_pick(digits, 16 * i, 10_000, 16)), pa.string()), 4, "0") for i in range(4)
        ]
        credit_card = pc.binary_join_element_wise(*groups, " ")

        user = self._text(events, 2, np.full(len(events), 7))
        domain = self._text(events, 3, np.full(len(events), 5))
        email = pc.binary_join_element_wise(user, "@", domain, ".com", "")

        current = 8 + np.sum([_lengths(column) for column in (name, email, credit_card, city, state)], axis=0)
        extra = self._text(events, 5, _extra_lengths(self._draw(events, 4), 0, current, AVERAGE_BYTES["person"]))
        return pa.Table.from_arrays(
            [
                pa.array(_last_person0(events) + FIRST_PERSON_ID),
                name,
                email,
                credit_card,
                city,
                state,
                self._timestamps(self.event_time_ms(events)),
                extra,
            ],
            schema=SCHEMAS["person"],
        )


# -- the source -------------------------------------------------------------------------


class NexmarkSource(Source):
    """Nexmark events of one kind as a source: bounded, or unbounded and paced by ``rate``.

    Event numbers are cut into blocks of ``block_events``, dealt round-robin
    to the splits: split ``i`` of ``n`` holds blocks ``i``, ``i + n``,
    ``i + 2n``... so the readers move through event time together and the
    watermark advances smoothly. A split's position is the number of the
    next event it will generate (an int); its rows depend on nothing else,
    so the source is replayable from any position, and a replayed epoch
    reads exactly the events up to the logged position.

    When unbounded, a split emits only the events whose event time has
    passed on the wall clock, so events arrive at ``rate`` per second; with
    ``events`` it ends after that many events, otherwise never.

    Args:
        kind: ``"bid"``, ``"auction"`` or ``"person"``.
        events: How many events (of all kinds) to number: ``0 .. events - 1``.
            Required when bounded.
        generator: The seed, rate and base time.
        unbounded: Generate in wall-clock time, forever unless ``events`` is given.
        num_splits: The number of splits; the job's parallelism when ``None``.
        block_events: Events per block dealt to the splits.

    Raises:
        PlanError: An argument is out of range.
    """

    name = "datagen.nexmark"

    def __init__(
        self,
        kind: Kind,
        events: int | None,
        generator: NexmarkGenerator,
        unbounded: bool = False,
        num_splits: int | None = None,
        block_events: int = 10_000,
    ) -> None:
        _check_kind(kind, "nexmark")
        if events is None and not unbounded:
            raise PlanError("nexmark: give events=N for a bounded source, or unbounded=True to generate forever")
        if events is not None and (not isinstance(events, (int, np.integer)) or isinstance(events, bool) or events < 0):
            raise PlanError(f"nexmark: events must be an int >= 0, got {events!r}")
        if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
            raise PlanError(f"nexmark: splits must be a positive int or None, got {num_splits!r}")
        if not isinstance(block_events, int) or block_events < 1:
            raise PlanError(f"nexmark: block_events must be a positive int, got {block_events!r}")
        self.kind: Kind = kind
        self.events = None if events is None else int(events)
        self.generator = generator
        self.unbounded = unbounded
        self.bounded = not unbounded
        if not unbounded:  # a backfill of generated history reads best in file-sized batches
            self.batch_rows = 400_000
        self.num_splits = num_splits
        self.block_events = block_events

    def schema(self) -> pa.Schema:
        return SCHEMAS[self.kind]

    def identity(self) -> dict[str, Any]:
        return {"source": self.name, "kind": self.kind, "events": self.events, "unbounded": self.unbounded}

    def splits(self, parallelism: int) -> list[Split]:
        count = self.num_splits or parallelism
        if self.events is not None:
            count = max(1, min(count, -(-self.events // self.block_events)))
        return [
            Split(
                f"{self.name}:{self.kind}[{i}/{count}]",
                (i, count),
                min_event_time_ms=int(self.generator.event_time_ms(i * self.block_events)),
            )
            for i in range(count)
        ]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        index, count = split.payload
        return _NexmarkReader(
            self, _Blocks(index, count, self.block_events), None if position is None else int(position)
        )


@dataclass(frozen=True)
class _Blocks:
    """Split ``index`` of ``count``: its events, numbered locally 0, 1, 2... in event order."""

    index: int
    count: int
    size: int

    def event(self, local: np.ndarray | int) -> np.ndarray:
        """The global event number of each local number."""
        block, within = np.divmod(np.asarray(local, dtype=np.int64), self.size)
        return (block * self.count + self.index) * self.size + within

    def local(self, event: int) -> int:
        """The local number of a global event number of this split."""
        block, within = divmod(event, self.size)
        if block % self.count != self.index:
            raise ReplayError(
                f"nexmark: event {event} is not in split {self.index} of {self.count} (blocks of {self.size}); "
                "the position comes from another split layout, so start over with a new checkpoint_dir"
            )
        return (block // self.count) * self.size + within

    def below(self, events: int) -> int:
        """How many of this split's events have numbers below ``events``."""
        full, rest = divmod(max(events, 0), self.size)
        blocks = max(0, -(-(full - self.index) // self.count))
        return blocks * self.size + (rest if full % self.count == self.index else 0)


class _NexmarkReader(SplitReader):
    def __init__(self, source: NexmarkSource, blocks: _Blocks, position: int | None) -> None:
        self._source = source
        self._blocks = blocks
        self._generator = source.generator
        self._kind = source.kind
        self._next = 0 if position is None else blocks.local(position)
        self._end = None if source.events is None else blocks.below(source.events)
        low, high = _OFFSETS[self._kind]
        self._share = (high - low) / PROPORTION_DENOMINATOR

    def _available(self) -> int | None:
        """The local end of what may be emitted now: everything when bounded, else what the clock has passed."""
        if not self._source.unbounded:
            return self._end
        ready = self._blocks.below(self._generator.events_until(int(time.time() * 1000)))
        return ready if self._end is None else min(ready, self._end)

    def next_batch(self, max_rows: int) -> pa.Table | None:
        if self._end is not None and self._next >= self._end:
            return None
        available = self._available()
        if available is not None and self._next >= available:
            # Unbounded and caught up with the clock: wait (at most 100 ms) for this split's next event.
            due_ms = int(self._generator.event_time_ms(self._blocks.event(self._next)))
            time.sleep(min(max(due_ms - time.time() * 1000, 0) / 1000, 0.1))
            available = self._available()
            assert available is not None
            if self._next >= available:
                return SCHEMAS[self._kind].empty_table()
        # Enough events to hold max_rows of the kind; fewer when the split (or the clock) ends first.
        span = min(int(max_rows / self._share) + PROPORTION_DENOMINATOR, _MAX_BATCH_EVENTS)
        if available is not None:
            span = min(span, available - self._next)
        events = self._blocks.event(np.arange(self._next, self._next + span, dtype=np.int64))
        chosen = np.flatnonzero(kind_mask(self._kind, events))
        if len(chosen) > max_rows:
            chosen = chosen[:max_rows]
            span = int(chosen[-1]) + 1
        self._next += span
        return self._generator.rows(self._kind, events[chosen])

    def read_until(self, position: Any, max_rows: int) -> pa.Table | None:
        """Re-read exactly the events before ``position``, whatever the clock says now."""
        stop = self._blocks.local(int(position))
        if stop < self._next:
            raise ReplayError(
                f"nexmark: replaying split {self._blocks.index} to event {position}, which it has passed already"
            )
        if stop == self._next and self._end is not None and self._next >= self._end:
            return None
        events = self._blocks.event(np.arange(self._next, stop, dtype=np.int64))
        events = events[kind_mask(self._kind, events)]
        if len(events) > max_rows:
            raise ReplayError(
                f"nexmark: replaying split {self._blocks.index} to event {position} gives {len(events)} rows, "
                f"more than the logged budget of {max_rows}; the source's settings changed, so start over with a "
                "new checkpoint_dir"
            )
        self._next = stop
        return self._generator.rows(self._kind, events)

    def position(self) -> int:
        return int(self._blocks.event(self._next))

    def metrics(self) -> dict[str, Any]:
        return {"next_event": self.position()}
