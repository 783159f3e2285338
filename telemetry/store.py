"""The telemetry store: time series of what the network did and what ndt did to it (SQLite).

One file (or ``:memory:``) in WAL mode, so readers never block the controller's writes.
Every table is indexed on time and on (src, dst, time) for range queries. Units: time
in s since the epoch, bytes, bit/s, seconds of delay, utilization as a 0–1 ratio.

Series: per-link counters and utilization; the traffic matrix (per switch pair);
predicted, measured and probed path delays; every applied configuration with who applied it
and its predicted effect, the closed loop's decisions and the operators' controls of it.
:meth:`TelemetryStore.maintain` applies retention (rows older than ``retention_s`` go, except
the newest ``routing`` record and the newest operator control of each kind, which a restarted
controller needs) and downsampling (rows older than ``raw_s`` are merged into
``bucket_s`` buckets: counters keep the bucket's last value, rates and delays the mean).
The store makes no decisions; a Prometheus server can serve the same read side.

Durability: every ``add_*`` call is one transaction, written whole or not at all; a refused
batch is named in a :class:`StoreError` and the store stays writable. ``synchronous=NORMAL``
in WAL mode: a crash of the process loses nothing committed, a power loss may lose the last
transactions before the WAL reached the disk, and neither corrupts the file. A file with
corrupted pages is refused at open (``PRAGMA quick_check``), with the way forward in the message.
"""

from __future__ import annotations

import json
import numbers
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twin.state.errors import NdtError, shown
from twin.state.metrics import finite_float

ROUTING_KIND = "routing"  # config rows holding every link's weight: the routing in place, kept through retention
DECISION_KIND = "loop"  # config rows: the closed loop's decisions
LINK_KIND = "link"  # config rows: the links out of service after each change, {"down": ["a->b", ...]} (the latest kept)
CONTROL_KIND = "loop-control"  # config rows: operators' pause, resume, dry run (the latest of each kept)
DELAY_KINDS = ("predicted", "measured", "probe")  # twin; hosts' own measurement (ReportMeasured); in-band probes
MAX_COUNTER = 2**63 - 1  # SQLite's largest integer; OpenFlow's "unsupported" (2**64 - 1) is above it
MAX_SAMPLES = 2**32 - 1  # a path delay's count, as gRPC's PathDelay.samples: a bucket's sum stays far below MAX_COUNTER

_SCHEMA = """
CREATE TABLE IF NOT EXISTS link_stats (
    ts REAL NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL,
    tx_bytes INTEGER NOT NULL, tx_packets INTEGER, tx_dropped INTEGER,
    utilization REAL, bucket_s REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS link_stats_ts ON link_stats (ts);
CREATE INDEX IF NOT EXISTS link_stats_pair ON link_stats (src, dst, ts);
CREATE TABLE IF NOT EXISTS link_offered (
    ts REAL NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, packets INTEGER NOT NULL,
    bucket_s REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS link_offered_ts ON link_offered (ts);
CREATE TABLE IF NOT EXISTS traffic (
    ts REAL NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, rate_bps REAL NOT NULL,
    bucket_s REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS traffic_ts ON traffic (ts);
CREATE INDEX IF NOT EXISTS traffic_pair ON traffic (src, dst, ts);
CREATE TABLE IF NOT EXISTS path_delay (
    ts REAL NOT NULL, kind TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, delay_s REAL NOT NULL,
    bucket_s REAL NOT NULL DEFAULT 0, samples INTEGER);
CREATE INDEX IF NOT EXISTS path_delay_ts ON path_delay (kind, ts);
CREATE INDEX IF NOT EXISTS path_delay_pair ON path_delay (src, dst, ts);
CREATE TABLE IF NOT EXISTS config (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, who TEXT NOT NULL, kind TEXT NOT NULL,
    payload TEXT NOT NULL, predicted TEXT);
CREATE INDEX IF NOT EXISTS config_ts ON config (ts);
"""


class StoreError(NdtError, ValueError):
    """A bad argument to the telemetry store, or a store file that cannot be opened."""


@dataclass(frozen=True)
class LinkSample:
    """Counters of the directed link src→dst at ``ts`` (s); utilization 0–1 since the previous sample.
    A counter the switch does not support is None (tx_bytes is required)."""

    ts: float
    src: str
    dst: str
    tx_bytes: int
    tx_packets: int | None
    tx_dropped: int | None
    utilization: float | None


@dataclass(frozen=True)
class PairValue:
    """One value for a (src, dst) pair at ``ts``: a rate (bit/s) or a delay (s); for a delay, how
    many measurements are behind it (a report's packets, a probe delay's own probes), where the
    measurement said (else None)."""

    ts: float
    src: str
    dst: str
    value: float
    samples: int | None = None


@dataclass(frozen=True)
class ConfigRecord:
    """An applied configuration: ``kind`` (e.g. ``weights``), its payload and predicted effect (JSON)."""

    id: int
    ts: float
    who: str
    kind: str
    payload: dict
    predicted: dict | None


def _refuse_if_damaged(db: sqlite3.Connection, path) -> None:
    """:class:`StoreError` (and ``db`` closed) when the file at ``path`` fails SQLite's quick check."""
    try:
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            problems = [line for line in verdict.splitlines() if not line.startswith("***")]
            raise sqlite3.DatabaseError(f"integrity check failed ({problems[0] if problems else verdict})")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(f"telemetry store {path}: damaged, cannot be used: {exc}; move it aside with its "
                         f"journal (mv {path} {path}.damaged; mv {path}-wal {path}.damaged-wal, if there is "
                         "one) and start again with a fresh store") from None


def check_store_file(path: Path) -> None:
    """Refuse a store file that cannot be opened or is damaged, as opening it would, without writing to it."""
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"telemetry store {path}: cannot be opened: {exc}") from None
    _refuse_if_damaged(db, path)
    db.close()


class TelemetryStore:
    """Append-only time series in SQLite; safe to share between threads."""

    def __init__(self, path: str | Path = ":memory:", retention_s: float = 7 * 86400.0,
                 raw_s: float = 3600.0, bucket_s: float = 60.0):
        if not (0 < bucket_s <= raw_s <= retention_s):
            raise StoreError(f"need 0 < bucket_s ({bucket_s}) <= raw_s ({raw_s}) <= retention_s ({retention_s})")
        self.retention_s, self.raw_s, self.bucket_s = retention_s, raw_s, bucket_s
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"telemetry store {path}: cannot be opened: {exc}") from None
        _refuse_if_damaged(self._db, path)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._allow_missing_counters()
            self._add_delay_samples_column()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"telemetry store {path}: cannot be used: {exc}") from None
        self._lock = threading.Lock()

    def _allow_missing_counters(self) -> None:
        """Stores written before unsupported counters were kept as missing had tx_packets and tx_dropped
        NOT NULL: rebuild that table once, rows kept."""
        columns = {row[1]: row[3] for row in self._db.execute("PRAGMA table_info(link_stats)")}
        if not (columns.get("tx_packets") or columns.get("tx_dropped")):
            return
        self._db.executescript("""
            BEGIN;
            ALTER TABLE link_stats RENAME TO link_stats_old;
            DROP INDEX IF EXISTS link_stats_ts;
            DROP INDEX IF EXISTS link_stats_pair;
            """ + _SCHEMA + """
            INSERT INTO link_stats SELECT * FROM link_stats_old;
            DROP TABLE link_stats_old;
            COMMIT;""")

    def _add_delay_samples_column(self) -> None:
        """Stores written before path delays kept their sample counts: add the column once (NULL:
        not known)."""
        if "samples" not in {row[1] for row in self._db.execute("PRAGMA table_info(path_delay)")}:
            self._db.execute("ALTER TABLE path_delay ADD COLUMN samples INTEGER")
        self._samples_sql = "samples"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ writes
    def add_link_samples(self, samples: list[LinkSample]) -> None:
        """Link samples, all or none: a counter outside 0..2**63-1 or a non-finite value refuses the batch."""
        rows = (_link_row(s) for s in samples)
        self._write("link_stats", ("ts", "src", "dst", "tx_bytes", "tx_packets", "tx_dropped", "utilization"), rows)

    def add_offered_packets(self, ts: float, totals: dict[tuple[str, str], int]) -> None:
        """Packets the route rules sent to each link's port so far (:class:`telemetry.offered.OfferedPackets`),
        read at ``ts``; all or none, as :meth:`add_link_samples`."""
        self._write("link_offered", ("ts", "src", "dst", "packets"),
                    ((_time(ts), s, d, _counter(f"link {s}->{d}", "offered packets", n)) for (s, d), n in totals.items()))

    def add_traffic_matrix(self, ts: float, rates_bps: dict[tuple[str, str], float]) -> None:
        """One traffic-matrix snapshot: (src, dst) → mean rate in bit/s over the last interval."""
        self._write("traffic", ("ts", "src", "dst", "rate_bps"),
                    ((_time(ts), s, d, _finite(f"traffic {s}->{d}", "rate_bps", r)) for (s, d), r in rates_bps.items()))

    def add_path_delays(self, ts: float, kind: str, delays_s: dict[tuple[str, str], float],
                        samples: dict[tuple[str, str], int] | None = None) -> None:
        """Per-path mean delays (s); ``kind`` is one of DELAY_KINDS; ``samples``: how many measurements
        are behind a pair's delay (a whole number from 1 to MAX_SAMPLES; pairs left out: not known)."""
        _check_kind(kind)
        samples = samples or {}
        self._write("path_delay", ("ts", "kind", "src", "dst", "delay_s", "samples"),
                    ((_time(ts), kind, s, d, _finite(f"{kind} delay {s}->{d}", "delay_s", v),
                      _sample_count(f"{kind} delay {s}->{d}", samples.get((s, d))))
                     for (s, d), v in delays_s.items()))

    def add_config(self, ts: float, who: str, kind: str, payload: dict, predicted: dict | None = None) -> int:
        """Record an applied configuration; returns its id."""
        if not who:
            raise StoreError("config: 'who' must name who applied it")
        try:
            args = (ts, who, kind, json.dumps(payload), None if predicted is None else json.dumps(predicted))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"config {kind!r} from {who!r}: payload is not JSON-serialisable ({exc})") from None
        with self._lock, self._transaction("config"):
            cur = self._db.execute("INSERT INTO config (ts, who, kind, payload, predicted) VALUES (?, ?, ?, ?, ?)", args)
        return int(cur.lastrowid)

    def _write(self, table: str, columns: tuple[str, ...], rows) -> None:
        """Insert ``rows`` (values of ``columns``, checked as they are produced) into ``table`` in one
        transaction: all of them or, on any error, none (the store stays writable) and a
        :class:`StoreError` naming the table and the cause."""
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        with self._lock, self._transaction(table):
            self._db.executemany(sql, rows)

    @contextmanager
    def _transaction(self, what: str):
        """BEGIN … COMMIT, rolled back when the body raises (the caller holds the lock)."""
        self._db.execute("BEGIN")
        try:
            yield
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            self._db.execute("ROLLBACK")
            raise StoreError(f"telemetry store: nothing written to {what}: {exc}") from None
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ reads
    def link_samples(self, start: float, end: float, src: str | None = None, dst: str | None = None) -> list[LinkSample]:
        """Link samples with start <= ts < end, optionally of one link, in time order."""
        where, args = _range(start, end, src, dst)
        rows = self._read("SELECT ts, src, dst, tx_bytes, tx_packets, tx_dropped, utilization FROM link_stats "
                          f"WHERE {where} ORDER BY ts, src, dst", args)
        return [LinkSample(*row) for row in rows]

    def latest_link_samples(self) -> list[LinkSample]:
        """The newest sample of every link."""
        rows = self._read(
            "SELECT l.ts, l.src, l.dst, l.tx_bytes, l.tx_packets, l.tx_dropped, l.utilization FROM link_stats l "
            "JOIN (SELECT src, dst, MAX(ts) AS ts FROM link_stats GROUP BY src, dst) m "
            "ON l.src = m.src AND l.dst = m.dst AND l.ts = m.ts ORDER BY l.src, l.dst", ())
        return [LinkSample(*row) for row in rows]

    def offered_packets(self, start: float, end: float) -> list[PairValue]:
        """The links' offered-packet counters with start <= ts < end, in time order."""
        where, args = _range(start, end)
        return [PairValue(*r) for r in self._read(f"SELECT ts, src, dst, packets FROM link_offered WHERE {where} "
                                                   "ORDER BY ts, src, dst", args)]

    def traffic_matrices(self, start: float, end: float) -> list[PairValue]:
        where, args = _range(start, end)
        return [PairValue(*r) for r in self._read(f"SELECT ts, src, dst, rate_bps FROM traffic WHERE {where} "
                                                   "ORDER BY ts, src, dst", args)]

    def traffic_totals(self, start: float, end: float) -> list[tuple[float, float]]:
        """(ts, total bit/s) per traffic-matrix snapshot with start <= ts < end, in time order: the sum of
        the snapshot's pair rates, summed in SQLite (a week of a large matrix is not read row by row)."""
        where, args = _range(start, end)
        return self._read(f"SELECT ts, SUM(rate_bps) FROM traffic WHERE {where} GROUP BY ts ORDER BY ts", args)

    def path_delays(self, kind: str, start: float, end: float, src: str | None = None,
                    dst: str | None = None) -> list[PairValue]:
        _check_kind(kind)
        where, args = _range(start, end, src, dst)
        return [PairValue(*r) for r in self._read(f"SELECT ts, src, dst, delay_s, {self._samples_sql} FROM path_delay "
                                                   "WHERE kind = ? "
                                                   f"AND {where} ORDER BY ts, src, dst", (kind, *args))]

    def configs(self, start: float, end: float, kind: str | None = None) -> list[ConfigRecord]:
        """Configurations with start <= ts < end (of ``kind`` only, if given), oldest first."""
        where, args = _range(start, end)
        if kind is not None:
            where, args = f"{where} AND kind = ?", (*args, kind)
        rows = self._read(f"SELECT id, ts, who, kind, payload, predicted FROM config WHERE {where} ORDER BY ts, id", args)
        return [ConfigRecord(i, ts, who, kind, json.loads(p), None if e is None else json.loads(e))
                for i, ts, who, kind, p, e in rows]

    def latest_config(self, kind: str) -> ConfigRecord | None:
        """The newest configuration of ``kind``, or None."""
        rows = self._read("SELECT id, ts, who, kind, payload, predicted FROM config WHERE kind = ? "
                          "ORDER BY id DESC LIMIT 1", (kind,))
        return next((ConfigRecord(i, ts, who, k, json.loads(p), None if e is None else json.loads(e))
                     for i, ts, who, k, p, e in rows), None)

    def _read(self, sql: str, args) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ housekeeping
    def maintain(self, now: float | None = None) -> dict[str, int]:
        """Apply retention and downsampling; returns rows deleted and rows merged per table."""
        now = time.time() if now is None else now
        keep_after, raw_after, b = now - self.retention_s, now - self.raw_s, self.bucket_s
        report = {}
        with self._lock, self._transaction("the retention pass"):
            for table in ("link_stats", "link_offered", "traffic", "path_delay"):
                report[f"{table}_expired"] = self._db.execute(f"DELETE FROM {table} WHERE ts < ?", (keep_after,)).rowcount
            report["config_expired"] = self._db.execute(  # what must survive a restart is kept, however old
                "DELETE FROM config WHERE ts < ? AND id NOT IN (SELECT COALESCE(MAX(id), -1) FROM config "
                "WHERE kind IN (?, ?, ?) GROUP BY kind, json_extract(payload, '$.action'))",
                (keep_after, ROUTING_KIND, CONTROL_KIND, LINK_KIND)).rowcount
            merges = {
                "link_stats": ("src, dst", "MAX(tx_bytes), MAX(tx_packets), MAX(tx_dropped), AVG(utilization)",
                               "src, dst, tx_bytes, tx_packets, tx_dropped, utilization"),
                "link_offered": ("src, dst", "MAX(packets)", "src, dst, packets"),
                "traffic": ("src, dst", "AVG(rate_bps)", "src, dst, rate_bps"),
                "path_delay": ("kind, src, dst",  # by the samples behind each mean where every row has them
                               "CASE WHEN COUNT(samples) = COUNT(*) THEN SUM(delay_s * samples) / SUM(samples) "
                               "ELSE AVG(delay_s) END, CASE WHEN COUNT(samples) = COUNT(*) THEN SUM(samples) END",
                               "kind, src, dst, delay_s, samples"),
            }
            for table, (keys, aggregates, columns) in merges.items():
                old = "ts < ? AND bucket_s < ?"
                count = self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE {old}", (raw_after, b)).fetchone()[0]
                if count == 0:
                    report[f"{table}_merged"] = 0
                    continue
                self._db.execute(
                    f"INSERT INTO {table} (ts, {columns}, bucket_s) "
                    f"SELECT CAST(ts / ? AS INTEGER) * ?, {keys}, {aggregates}, ? FROM {table} WHERE {old} "
                    f"GROUP BY CAST(ts / ? AS INTEGER), {keys}", (b, b, b, raw_after, b, b))
                self._db.execute(f"DELETE FROM {table} WHERE {old}", (raw_after, b))
                report[f"{table}_merged"] = count
        return report


def _link_row(sample: LinkSample) -> tuple:
    tag = f"link {sample.src}->{sample.dst}"
    counters = []
    for name in ("tx_bytes", "tx_packets", "tx_dropped"):
        value = getattr(sample, name)
        if value is None and name != "tx_bytes":
            counters.append(None)
            continue
        counters.append(_counter(tag, name, value))
    utilization = None if sample.utilization is None else _finite(tag, "utilization", sample.utilization)
    return (_time(sample.ts), sample.src, sample.dst, *counters, utilization)


def _counter(tag: str, name: str, value) -> int:
    """``value`` when it is a whole number from 0 to ``MAX_COUNTER``; otherwise a StoreError naming ``tag`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_COUNTER:
        raise StoreError(f"{tag}: {name} must be a whole number from 0 to 2**63-1, got {shown(value)}")
    return value


def _sample_count(tag: str, value) -> int | None:
    """``value`` as an int when it is None (not known) or a whole number from 1 to
    ``MAX_SAMPLES``; otherwise a StoreError naming ``tag``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_SAMPLES:
        raise StoreError(f"{tag}: samples must be a whole number from 1 to 2**32-1, got {shown(value)}")
    return int(value)


def _finite(tag: str, name: str, value) -> float:
    """``value`` as a float when it is a finite number >= 0; otherwise a StoreError naming ``tag`` and ``name``."""
    number = finite_float(value)
    if number is None or number < 0:
        raise StoreError(f"{tag}: {name} must be a finite number >= 0, got {shown(value)}")
    return number


def _time(ts) -> float:
    return _finite("sample", "ts", ts)


def _check_kind(kind: str) -> None:
    if kind not in DELAY_KINDS:
        raise StoreError(f"path delay kind {kind!r} is not one of {DELAY_KINDS}")


def _range(start: float, end: float, src: str | None = None, dst: str | None = None) -> tuple[str, tuple]:
    if not start <= end:
        raise StoreError(f"time range: start {start} is after end {end}")
    where, args = "ts >= ? AND ts < ?", [start, end]
    for column, value in (("src", src), ("dst", dst)):
        if value is not None:
            where += f" AND {column} = ?"
            args.append(value)
    return where, tuple(args)
