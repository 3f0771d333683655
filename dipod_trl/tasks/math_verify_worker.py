"""math-verify with a deadline, from any thread of any process.

math-verify (SymPy) can compute for minutes on answers such as ``(9^{9999})^{(9999)}``, and its own timeout is a
SIGALRM handler: it fires on the main thread only (TRL runs async rewards on an event-loop thread), so off it a
check could hang training. Here every check runs in a separate process, where a deadline can always be enforced:

- each process that checks answers starts one persistent worker on first use (``python <this file>``: only the
  standard library and math-verify are imported there, once, and warmed up; its parser caches stay warm);
- the worker runs each check on its own main thread under an interval timer: at the deadline the check is
  interrupted and answered "timed out", and the worker serves the next one;
- the caller waits at most the deadline plus a short grace period. A worker that has not answered by then (stuck in
  C code, where the timer cannot interrupt) is killed, and a replacement starts at once in the background.

Timeout: :func:`set_timeout` or the environment variable ``DIPOD_MATH_VERIFY_TIMEOUT`` (seconds, default 0.5). A
check that runs out of time counts as "not equal" and is counted (:func:`timeouts`). POSIX only (interval timers,
``select`` on pipes); elsewhere math-verify runs in-process without a deadline.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

DEFAULT_TIMEOUT_S = 0.5  # the LLaDA generations' checks take < 0.15 s on a warm worker; SymPy bombs time out
GRACE_S = 0.3  # extra wait for the worker's answer before it counts as stuck and is killed
STARTUP_TIMEOUT_S = 120.0  # importing SymPy on a busy machine; never charged to a completion
_HEADER = struct.Struct("!I")
_WARM_UP = [("\\frac{1}{2}", "0.5"), ("2\\sqrt{5}", "\\sqrt{20}"), ("(1, 2]", "\\left(1,2\\right]"),
            ("\\{1, 2\\}", "2, 1"), ("10\\%", "\\frac{1}{10}"), ("x = 3", "3"), ("5 \\text{ cm}", "5"),
            ("\\pi / 2", "90^\\circ")]
logger = logging.getLogger(__name__)


class MathVerifyUnavailable(RuntimeError):
    """The worker process could not start (math-verify missing or broken): an environment error, never a score."""


# ----------------------------------------------------------------------------- the check itself (runs in the worker)


def check(pred: str, gold: str) -> bool:
    """math-verify equivalence of two answers, each parsed as ``\\boxed{...}`` LaTeX or a plain expression."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config, parsing_timeout=None)
    pred_parsed = parse(f"\\boxed{{{pred}}}", extraction_config=config, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


class _Deadline(BaseException):
    """Raised by the worker's timer; a BaseException, so SymPy's ``except Exception`` blocks do not swallow it."""


def _on_deadline(signum: int, frame: Any) -> None:
    raise _Deadline


def _check_until(pred: str, gold: str, timeout: float) -> bool | None:
    """:func:`check` interrupted at ``timeout`` (re-fired every 50 ms until it stops); None when it timed out."""
    signal.setitimer(signal.ITIMER_REAL, timeout, 0.05)
    try:
        return check(pred, gold)
    except _Deadline:
        return None
    except Exception:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


# ----------------------------------------------------------------------------- framing: length-prefixed pickles


def _write(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("no answer from the math-verify worker in time")
        chunk = os.read(fd, left)
        if not chunk:
            raise EOFError("the math-verify worker closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read(fd: int, deadline: float | None = None) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exactly(fd, size, deadline))


def _serve() -> None:
    """Worker main loop: requests ``(pred, gold, timeout)`` on stdin, answers True/False/None on stdout."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]  # no shadowing by tasks/*.py
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, never into the answers
    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGALRM, _on_deadline)
    for pred, gold in _WARM_UP:  # imports and parser caches, once
        _check_until(pred, gold, STARTUP_TIMEOUT_S)
    _write(out_fd, "ready")
    while True:
        try:
            pred, gold, timeout = _read(0)
        except EOFError:  # the caller closed the pipe or exited
            return
        _write(out_fd, _check_until(pred, gold, timeout))


# ----------------------------------------------------------------------------- client (runs in the caller's process)


class _Worker:
    """The calling process's handle on its worker: started lazily, one check at a time, replaced when stuck."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.timeouts = 0

    def after_fork(self) -> None:  # a forked caller starts its own worker; the parent's stays the parent's
        self.lock = threading.Lock()
        self.proc, self.ready = None, False

    def spawn(self) -> None:
        """Start a worker process without waiting for it."""
        if not sys.executable:
            raise MathVerifyUnavailable("cannot start the math-verify worker: sys.executable is empty")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)  # Ctrl-C is the caller's
        self.ready = False

    def wait_ready(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.spawn()
        if not self.ready:
            try:
                if _read(self.proc.stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT_S) != "ready":
                    raise EOFError("unexpected greeting")
            except (OSError, EOFError, TimeoutError, pickle.UnpicklingError, struct.error) as e:
                self.stop()
                raise MathVerifyUnavailable(
                    f"the math-verify worker ({sys.executable} {__file__}) did not start ({e}); see its error above. "
                    "Check that `python -c 'import math_verify'` works (pip install math-verify antlr4-python3-runtime==4.13.2)."
                ) from e
            self.ready = True
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc)
            self.proc, self.ready = None, False

    def equal(self, pred: str, gold: str, timeout: float) -> bool | None:
        with self.lock:
            proc = self.wait_ready()
            try:
                _write(proc.stdin.fileno(), (pred, gold, timeout))
                verdict = _read(proc.stdout.fileno(), time.monotonic() + timeout + GRACE_S)
            except (OSError, EOFError, TimeoutError, pickle.UnpicklingError, struct.error) as e:
                logger.warning("math-verify worker replaced (%s)", e)
                self.stop()
                self.spawn()  # warms up while the caller goes on
                verdict = None
            if verdict is None:
                self.timeouts += 1
                logger.warning("math-verify check timed out after %.2f s (scored 0; %d so far): %.80r vs %.80r",
                               timeout, self.timeouts, pred, gold)
            return verdict


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    for pipe in (proc.stdin, proc.stdout):
        try:
            pipe.close()
        except OSError:
            pass
    proc.wait()


def _checked_timeout(seconds: Any, source: str) -> float:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{source} must be a positive number of seconds, got {seconds!r}")
    return value


_WORKER = _Worker()
_SUPPORTED = os.name == "posix" and hasattr(signal, "setitimer")
_timeout_s = _checked_timeout(os.environ.get("DIPOD_MATH_VERIFY_TIMEOUT", DEFAULT_TIMEOUT_S),
                              "DIPOD_MATH_VERIFY_TIMEOUT")
if _SUPPORTED and __name__ != "__main__":
    os.register_at_fork(after_in_child=_WORKER.after_fork)
    atexit.register(_WORKER.stop)


def start() -> None:
    """Start this process's worker in the background, without waiting: the tasks call it when their rewards are
    set up, so the first check of a run does not pay the worker's start-up (about 1 s) on top of its deadline."""
    if _SUPPORTED:
        with _WORKER.lock:
            if _WORKER.proc is None or _WORKER.proc.poll() is not None:
                _WORKER.spawn()


def set_timeout(seconds: float) -> float:
    """Set the deadline of one math-verify check, in seconds (default 0.5, or ``DIPOD_MATH_VERIFY_TIMEOUT``);
    returns the previous one."""
    global _timeout_s
    previous, _timeout_s = _timeout_s, _checked_timeout(seconds, "the math-verify timeout")
    return previous


def get_timeout() -> float:
    """The deadline of one math-verify check, in seconds."""
    return _timeout_s


def timeouts() -> int:
    """How many checks in this process ran out of time (each scored its completion 0)."""
    return _WORKER.timeouts


def equal(pred: str, gold: str) -> bool:
    """math-verify equivalence within the deadline; a check that runs out of time is False (and counted)."""
    if not _SUPPORTED:
        return check(pred, gold)
    return bool(_WORKER.equal(pred, gold, _timeout_s))


if __name__ == "__main__":
    _serve()
