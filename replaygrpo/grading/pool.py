"""Grading in killable worker processes, so one pathological answer cannot stall an eval.

Why processes and not math-verify's own timeouts: those use ``signal.alarm``, which
raises off the main thread and cannot interrupt a long C-level operation (a huge
integer power inside sympy). A process can always be killed.

Why the "spawn" context: the trainer process has torch (and maybe CUDA, OpenMP pools)
loaded, and forking such a process can deadlock the child. Spawned workers import only
``replaygrpo.grading`` and math-verify (~0.5-1 s each), once per pool.

Work split: the parent extracts the box and runs the cheap tiers (``prepare``), which
settle most answers; only undecided (prediction, gold) pairs go to a worker, each
distinct pair once per ``grade_many`` call. Workers keep per-process caches of parsed
golds and predictions (``mv_equivalent``'s ``lru_cache``), so a gold shared by a group
of k samples is parsed once per worker. Up to ``_DEPTH`` answers are queued per worker
so a busy machine's wake-up latency is not paid per answer; each answer's clock starts
when the previous one on that worker finishes.

Caveat of "spawn": the child re-imports the caller's ``__main__`` module, so a script
that grades at import time must put its work under ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from functools import lru_cache
from multiprocessing.connection import Connection, wait

from replaygrpo.grading.equivalence import prepare
from replaygrpo.grading.extract import extract_answer
from replaygrpo.grading.settings import GraderSettings

_READY = "ready"
_STARTUP_LIMIT_S = 300.0  # a worker that cannot import math-verify in this long is broken
# Bytes in flight to a stuck worker must fit the OS pipe buffer (64 KiB on Linux), or
# the parent would block in send() and never reach the deadline check.
_MAX_QUEUED_CHARS = 8_000
_DEPTH = 8  # answers queued per worker: hides process wake-up latency on a busy machine
_IN_WORKER = False  # set in worker processes: they are the sandbox, so call sympy directly


# ---------------------------------------------------------------- math-verify tier
def _wrap(s: str) -> str:
    # math-verify parses `$...$` more reliably than `\boxed{...}` (`\boxed{25\%}` fails);
    # normalize() already removed every `$` from the answer.
    return "$" + s + "$"


@lru_cache(maxsize=8192)
def _mv_parse(s: str) -> tuple:
    from math_verify import parse

    return tuple(parse(_wrap(s), parsing_timeout=None))  # type: ignore[arg-type]


@lru_cache(maxsize=65536)
def mv_equivalent(pred: str, gold: str) -> bool:
    """math-verify on normalised strings, no time limit: call it only in a killable
    process. Each distinct gold and prediction is parsed once per process (caches)."""
    from math_verify import verify

    g, p = _mv_parse(gold), _mv_parse(pred)
    if not g or not p:
        return False
    return bool(verify(list(g), list(p), timeout_seconds=None))  # type: ignore[arg-type]


def _worker_main(conn: Connection) -> None:
    global _IN_WORKER
    _IN_WORKER = True
    # We disable math-verify's alarm timeouts on purpose; silence its warning about it.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Warm up: the first parse builds the LaTeX grammar (~0.3 s), which must not eat
    # into the first answer's time limit.
    mv_equivalent("\\frac{1}{2}+x", "0.5+x")
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, pred, gold = msg
        try:
            result = bool(mv_equivalent(pred, gold))
        except Exception:  # noqa: BLE001 - sympy raises all sorts; that answer is wrong
            result = False
        conn.send((key, result))


class _Worker:
    """One spawned grading process, its pipe, and the answers sent to it in order."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.born = time.monotonic()
        self.inflight: deque[tuple[int, int]] = deque()  # (task id, chars), oldest first
        self.head_start = 0.0  # when the oldest in-flight answer began, for its deadline

    def wait_ready(self) -> bool:
        """Block until the worker finished importing; False if it died instead."""
        while not self.ready:
            left = _STARTUP_LIMIT_S - (time.monotonic() - self.born)
            if left <= 0 or not self.conn.poll(left):
                return False
            try:
                self.ready = self.conn.recv() == _READY
            except (EOFError, OSError):
                return False
        return True

    def can_take(self, chars: int) -> bool:
        queued = sum(c for _, c in self.inflight)
        return self.ready and len(self.inflight) < _DEPTH and (
            not self.inflight or queued + chars <= _MAX_QUEUED_CHARS
        )

    def send(self, task_id: int, pred: str, gold: str) -> None:
        if not self.inflight:
            self.head_start = time.monotonic()
        self.inflight.append((task_id, len(pred) + len(gold)))
        self.conn.send((task_id, pred, gold))

    def finished(self) -> None:
        """Drop the oldest in-flight task; the next one starts its clock now."""
        self.head_start = time.monotonic()
        self.inflight.popleft()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(1)
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()


# ---------------------------------------------------------------- single calls
_helper: _Worker | None = None
_helper_lock = threading.Lock()


def start_helper() -> None:
    """Start the helper `verify_with_limit` uses now, without waiting for it: its start (~0.6 s,
    mostly importing math-verify) then overlaps the caller's setup instead of landing in the
    first grading step that needs it."""
    global _helper
    if _IN_WORKER or mp.current_process().daemon:
        return
    with _helper_lock:
        if _helper is None or not _helper.proc.is_alive():
            _helper = _Worker()


def verify_with_limit(pred: str, gold: str, timeout: float) -> bool:
    """``mv_equivalent`` with a hard wall-clock limit, from any thread or process.

    Runs in one persistent helper process shared by the whole interpreter (started on
    first use, replaced when it overruns), so each call costs a pipe round trip rather
    than a process start. Calls from several threads take turns.
    """
    global _helper
    if _IN_WORKER:
        return mv_equivalent(pred, gold)
    if mp.current_process().daemon:
        return _verify_with_alarm(pred, gold, timeout)
    with _helper_lock:
        if _helper is None or not _helper.proc.is_alive():
            _helper = _Worker()
        helper = _helper
        if not helper.wait_ready():
            helper.kill()
            _helper = None
            return False
        try:
            helper.inflight.clear()  # a previous call may have left its entry
            helper.send(0, pred, gold)
            if helper.conn.poll(max(timeout, 0.0)):
                return bool(helper.conn.recv()[1])
        except (EOFError, OSError):
            pass
        # Overran or died: kill it and start the replacement now, so its import overlaps
        # with whatever the caller does next.
        helper.kill()
        _helper = _Worker()
        return False


class _Deadline(BaseException):
    """Not an Exception, so math-verify's and sympy's ``except Exception`` let it pass."""


def _verify_with_alarm(pred: str, gold: str, timeout: float) -> bool:
    """For daemonic processes (``multiprocessing.Pool`` workers), which may not start a
    helper: an interval timer. It works only on the main thread and cannot interrupt C
    code; ``is_safe_for_sympy`` keeps the known C-level hangs out."""
    if threading.current_thread() is not threading.main_thread():
        return False  # no way to enforce the limit here: refuse rather than risk a hang

    def on_alarm(signum: int, frame: object) -> None:
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(timeout, 1e-3))
    try:
        return mv_equivalent(pred, gold)
    except _Deadline:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- the pool


class GradingPool:
    """Grade many responses in ``num_workers`` spawned processes with a per-answer limit.

    Use as a context manager. An answer whose sympy check exceeds ``timeout`` seconds is
    marked False and its worker is killed and replaced; the other answers go on.
    ``num_workers=0`` grades in this process, with the same limit (via the helper that
    ``equivalent`` uses). ``settings`` (tolerance, percent, no-box fallback) default to
    the ``default`` profile; the workers only run math-verify, which they do not change.
    """

    def __init__(self, num_workers: int = 2, timeout: float = 5.0, settings: GraderSettings | None = None) -> None:
        self.num_workers = num_workers
        self.timeout = timeout
        self.settings = settings or GraderSettings()
        # Start now so the workers' imports overlap with the caller's own setup.
        self._workers = [_Worker() for _ in range(num_workers)]
        if not num_workers:
            start_helper()

    def wait_ready(self) -> None:
        """Block until every worker has started (optional: grading waits anyway)."""
        for w in self._workers:
            if not w.wait_ready():
                raise RuntimeError("grading worker did not start")

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self._workers:
            w.stop()
        self._workers = []

    def grade_many(self, responses: Sequence[str], golds: Sequence[str],
                   tolerances: Sequence[float | None] | None = None) -> list[bool]:
        """Correctness of each response against its gold, in input order; ``tolerances``
        are the problems' own absolute tolerances (None where a problem has none)."""
        out = [False] * len(responses)
        for i, ok in self.grade_many_iter(responses, golds, tolerances):
            out[i] = ok
        return out

    def grade_many_iter(
        self, responses: Sequence[str], golds: Sequence[str], tolerances: Sequence[float | None] | None = None
    ) -> Iterator[tuple[int, bool]]:
        """Yield ``(index, correct)`` once for every response, in completion order."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        tols = list(tolerances) if tolerances is not None else [None] * len(golds)
        if len(tols) != len(golds):
            raise ValueError(f"{len(tols)} tolerances but {len(golds)} golds")
        keys: list[tuple[str, str]] = []  # task id -> (normalised pred, normalised gold)
        waiting: dict[tuple[str, str], list[int]] = {}  # key -> indices awaiting it
        done: dict[tuple[str, str], bool] = {}
        queue: deque[int] = deque()  # task ids not yet sent to a worker

        def resolve(block: bool) -> Iterator[tuple[int, bool]]:
            for tid, ok in self._pump(queue, keys, block):
                done[keys[tid]] = ok
                yield from ((i, ok) for i in waiting.pop(keys[tid]))

        try:
            for i, (resp, gold, tol) in enumerate(zip(responses, golds, tols)):
                decided, pred, norm_gold = self._prepare(resp, gold, tol)
                key = (pred, norm_gold)
                if decided is not None or key in done:
                    yield i, done[key] if decided is None else decided
                elif key in waiting:
                    waiting[key].append(i)  # same answer to the same problem: grade once
                elif not self._workers:
                    done[key] = verify_with_limit(pred, norm_gold, self.timeout)
                    yield i, done[key]
                else:
                    waiting[key] = [i]
                    queue.append(len(keys))
                    keys.append(key)
                    yield from resolve(block=False)  # keep workers busy while we prepare
            while waiting:
                yield from resolve(block=True)
        finally:
            # A consumer that stops early leaves answers in flight; their results would
            # reach the next call, so those workers are replaced instead.
            for w in list(self._workers):
                if w.inflight:
                    for _ in self._replace(w, deque()):
                        pass

    def _prepare(self, response: str, gold: str, tolerance: float | None) -> tuple[bool | None, str, str]:
        try:
            answer = extract_answer(response, self.settings.fallback, self.settings.join_boxes)
            if answer is None:
                return False, "", ""
            return prepare(answer, str(gold), self.settings, tolerance)
        except Exception:  # noqa: BLE001
            return False, "", ""

    def _pump(
        self, queue: deque[int], keys: list[tuple[str, str]], block: bool
    ) -> Iterator[tuple[int, bool]]:
        """Top up workers, collect finished answers, kill workers past their deadline."""
        for w in self._workers:
            while queue and w.can_take(len(keys[queue[0]][0]) + len(keys[queue[0]][1])):
                tid = queue.popleft()
                try:
                    w.send(tid, *keys[tid])
                except (OSError, ValueError):
                    break  # dead pipe: the EOF below replaces the worker
        limit = 0.0
        if block:
            deadlines = [w.head_start + self.timeout for w in self._workers if w.inflight]
            now = time.monotonic()
            limit = max(min(deadlines) - now, 0.0) if deadlines else _STARTUP_LIMIT_S
        for conn in wait([w.conn for w in self._workers], timeout=limit):
            w = next(w for w in self._workers if w.conn is conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                if not w.ready:
                    raise RuntimeError("grading worker died while starting") from None
                yield from self._replace(w, queue)
                continue
            if msg == _READY:
                w.ready = True
            elif w.inflight and w.inflight[0][0] == msg[0]:
                w.finished()
                yield msg[0], msg[1]
        now = time.monotonic()
        for w in list(self._workers):
            if w.inflight and now > w.head_start + self.timeout:
                yield from self._replace(w, queue)
            elif not w.ready and now - w.born > _STARTUP_LIMIT_S:
                raise RuntimeError("grading worker did not start")

    def _replace(self, w: _Worker, queue: deque[int]) -> Iterator[tuple[int, bool]]:
        """Kill ``w``; its current answer is False, the ones queued behind it go back."""
        head = w.inflight.popleft()[0] if w.inflight else None
        queue.extendleft(reversed([tid for tid, _ in w.inflight]))
        w.kill()
        self._workers[self._workers.index(w)] = _Worker()
        if head is not None:
            yield head, False
