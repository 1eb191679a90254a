"""One decision round per interval for every pool of this operator (issue 14), instead of a Kopf timer each.

A Kopf timer per pool ran each decision through Kopf's handler machinery and its executor: at 1,000 pools
the ticks queued behind each other and a pool was decided once a minute, not every 15 s. Here one thread
wakes on a fixed grid of the interval and hands every known pool to a small thread pool (bounded
concurrency); a pool whose previous decision is still running is skipped that round, so one slow pool
(a hung Prometheus) holds nobody else. The decision itself is `Operator.autoscale`, unchanged; its status
patch is written here, by other threads (a merge patch of the status subresource, as Kopf writes it), so
a slow apiserver delays the writes, not the decisions.

Which pools: an async Kopf daemon per pool (`member`) joins the round while it runs and leaves when Kopf
stops it, so Kopf still decides membership: the selector's labels, deletion, and peering (Kopf stops
every daemon while this operator is paused by a peer of higher priority, and spawns them again after).
The daemon's `body` is Kopf's live view of the pool, refreshed by every watch event. A pool that joins
is decided at once, not at the next round (after `initial_delay` with peering: see handlers.register).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import threading
import time
from collections.abc import Mapping

import kopf

from inferencepool.operator import logs

log = logs.get("inferencepool.operator.rounds")


def release_free_memory() -> None:
    """Give freed heap back to the OS (glibc's malloc_trim), once a round. A burst of watch events (1,000
    new pools at start) grows the heap; CPython frees the objects, but glibc keeps the pages, so the RSS
    stayed at the burst's peak (on the bed: 753 MiB -> 594 MiB by one trim). No-op off glibc."""
    if _libc is not None:
        _libc.malloc_trim(0)


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim, _libc.mallopt
except (OSError, AttributeError):
    _libc = None

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's malloc.h


def tune_allocator(arenas: int = 2, mmap_threshold: int = 128 * 1024) -> bool:
    """glibc malloc settings for an operator of many pools, set before its threads start (as the
    MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ variables would; those, when set, win). By /proc/self/smaps
    and CPython's allocator totals (memdump.py, 300 pools on the bed), the RSS that grew with the pools
    was mostly malloc's free memory, not live objects: 34 MiB in per-thread arenas (glibc makes up to 8
    per core; the operator runs ~30 threads) and a main heap 66 MiB over its start, where the big
    transient blocks (a Prometheus answer, a watch event's body) had landed once glibc's sliding mmap
    threshold rose. Two arenas, and a fixed 128 KiB threshold (big blocks get their own mapping, handed
    back when freed), keep that memory out. No-op off glibc; False if not applied."""
    import os

    if _libc is None:
        return False
    done = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        done &= bool(_libc.mallopt(M_ARENA_MAX, arenas))
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        done &= bool(_libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    return done


class Rounds:
    """Every member pool decided once per `interval`, at most `workers` decisions at a time."""

    def __init__(self, operator, interval: float, indexes: tuple[str, ...] = (), workers: int = 8,
                 warn=None, quiet: float = 60.0):
        self.operator, self.interval, self.indexes = operator, interval, indexes
        self.workers = workers
        self._failures = logs.QuietWarnings(quiet, warn=warn)  # HandlerFailed Events, as Kopf posted them
        self._members: dict[tuple[str, str], kopf.Body] = {}
        self._evictions: dict[tuple[str, str], asyncio.Event] = {}  # by the member daemon running now
        self._busy: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._writes: dict[tuple[str, str], dict] = {}  # status patches not sent yet, by pool
        self._writing: set[tuple[str, str]] = set()  # pools with a writer on them
        self._context: contextvars.Context | None = None  # Kopf's (its Event poster lives there)
        self._kwargs: dict = {}  # the indexes Kopf hands its handlers
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_round_seconds: float | None = None

    # ------------------------------------------------------------ membership (from Kopf's daemons)

    async def member(self, body, stopped, **kwargs) -> None:
        """Kopf daemon of one pool: in the round from now until Kopf stops it (deleted, paused, exiting) or
        the pool leaves the operator's selector (`evict`)."""
        key = (body.metadata.namespace, body.metadata.name)
        evicted = self._evictions[key] = asyncio.Event()
        self.join(key, body, kwargs)
        waits = [asyncio.ensure_future(stopped.wait()), asyncio.ensure_future(evicted.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            if self._evictions.get(key) is evicted:
                del self._evictions[key]
            self.leave(key, body)

    def evict(self, key: tuple[str, str]) -> bool:
        """End the pool's daemon: it left the selector. The apiserver's filtered watch then sends DELETED
        (with the object as it last matched) and no more events; Kopf forgets the pool but, seeing no
        deletion under way, leaves its daemon running, which would decide it for ever. In Kopf's loop."""
        evicted = self._evictions.pop(key, None)
        if evicted is not None:
            evicted.set()
        return evicted is not None

    def join(self, key: tuple[str, str], body, kwargs: Mapping) -> None:
        with self._lock:
            self._members[key] = body
            self._kwargs = {k: v for k, v in kwargs.items() if k in self.indexes}
            if self._thread is None:
                self._context = contextvars.copy_context()
                self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="decide")
                self._thread = threading.Thread(target=self._loop, name="rounds", daemon=True)
                self._thread.start()
        self._submit(key)  # a new pool is decided at once

    def leave(self, key: tuple[str, str], body=None) -> None:
        """Out of the round; with `body`, only if no newer daemon of the pool has joined since."""
        with self._lock:
            if body is None or self._members.get(key) is body:
                self._members.pop(key, None)

    def members(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._members)

    def kick(self, key: tuple[str, str]) -> None:
        """Decide a member now, without waiting for the round (its Deployment just appeared)."""
        self._submit(key)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ the round

    def _loop(self) -> None:
        """On a fixed grid of the interval: every member not still busy with its last decision."""
        start = time.monotonic()
        k = 1
        while not self._stop.wait(max(0.0, start + k * self.interval - time.monotonic())):
            began = time.monotonic()
            with self._lock:
                keys = list(self._members)
            skipped = sum(not self._submit(key) for key in keys)
            if skipped:
                log.warning("pools still deciding from the last round", skipped=skipped, pools=len(keys))
            k = max(k + 1, int((time.monotonic() - start) / self.interval) + 1)  # a late round skips a slot
            self.last_round_seconds = time.monotonic() - began
            release_free_memory()

    def _submit(self, key: tuple[str, str]) -> bool:
        """Hand the pool's decision to the workers; False while its last one still runs."""
        with self._lock:
            if key in self._busy:
                return False
            if key not in self._members or self._pool is None:
                return True
            self._busy.add(key)
        self._pool.submit(self._context.copy().run, self._decide, key)
        return True

    def _decide(self, key: tuple[str, str]) -> None:
        try:
            with self._lock:
                body = self._members.get(key)
            if body is None:
                return
            patch = kopf.Patch()
            try:
                self.operator.autoscale(body, body.status, patch, **self._kwargs)
            except Exception as error:  # noqa: BLE001 - one pool's failure is logged; the next round retries it
                log.error("decision failed", namespace=key[0], pool=key[1], error=repr(error), exc_info=True)
                self._failures.post(key, body, "HandlerFailed", f"decision failed: {error!r}")
            if patch.get("status"):
                self._write_status(key, dict(patch["status"]))
        finally:
            with self._lock:
                self._busy.discard(key)

    def _write_status(self, key: tuple[str, str], status: dict) -> None:
        """Queue the pool's status patch for the writers, so that a slow apiserver delays writes, not
        decisions (on a loaded bed a status patch took seconds, and 8 deciding threads waiting on them
        decided 50 of 1,000 pools a round). A patch still queued takes the newer fields; one pool's writes
        stay in order (one at a time)."""
        with self._lock:
            self._writes[key] = {**self._writes.get(key, {}), **status}
            if key in self._writing:
                return
            self._writing.add(key)
            if self._writer is None:
                self._writer = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="write-status")
        self._writer.submit(self._context.copy().run, self._flush, key)

    def _flush(self, key: tuple[str, str]) -> None:
        """A merge patch of the status subresource (what Kopf sent for a handler's `patch.status`)."""
        while True:
            with self._lock:
                status = self._writes.pop(key, None)
                if status is None:
                    self._writing.discard(key)
                    return
            try:
                self.operator.kube.patch_status(key[0], key[1], status)
            except Exception as error:  # noqa: BLE001 - the apiserver away: write again next decision
                self.operator.status_not_written(key)
                log.warning("status not written", namespace=key[0], pool=key[1], error=str(error))
