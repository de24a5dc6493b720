"""A first-come, first-served lock for the model (``Scope.lock``).

``threading.Lock`` makes no promise of order: a thread that releases it and asks again at once (a Sweep going
from one question to the next) usually gets it back before a thread that has been waiting (a visitor's Compare),
so a long Sweep that let go between questions would still starve everyone else. ``FairLock`` hands the lock to
the waiters in the order they asked. Like ``threading.Lock`` (and unlike ``RLock``) it has no owner: a generator
that took it in one worker thread may release it in another (Gradio runs each step of a streamed callback in
whichever thread is free).
"""

from __future__ import annotations

import threading
from collections import deque


class FairLock:
    """A FIFO lock: ``with lock: ...``, or ``acquire()`` / ``release()``."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._locked = False
        self._waiters: deque = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._cond:
            if not self._locked and not self._waiters:
                self._locked = True
                return True
            if not blocking:
                return False
            ticket = object()
            self._waiters.append(ticket)
            try:
                got = self._cond.wait_for(lambda: not self._locked and self._waiters[0] is ticket,
                                          None if timeout is None or timeout < 0 else timeout)
                if got:
                    self._locked = True
                return got
            finally:
                self._waiters.remove(ticket)
                self._cond.notify_all()  # the next in line may now be first

    def release(self) -> None:
        with self._cond:
            if not self._locked:
                raise RuntimeError("release of an unlocked FairLock")
            self._locked = False
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._locked

    def waiting(self) -> int:
        """How many threads wait for the lock."""
        return len(self._waiters)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["FairLock"]
