"""Helper sessions: one ``sh`` that runs the helper's verbs one after another.

Started once (``sh -c "$HELPER" droprun-helper serve``, see ``do_serve`` in helper.sh) and
kept, a session saves every later verb a start of ``sh`` and a parse of the helper text,
and over ssh a channel. A thread takes one for one verb, so verbs of several runs never
share one. At most :data:`MAX_OPEN` are open per host, idle ones included: sshd allows ten
channels per connection (``MaxSessions``), and the verbs that read stdin, ``true`` and
Slurm's commands need some of them too. A thread that finds them all busy waits for one,
within its verb's time. A session whose verb failed to answer in time, or whose stream
broke, is closed and never reused.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Sequence

from agent.hosts.base import HostError
from agent.hosts.transport import CommandResult, Stream

log = logging.getLogger(__name__)

MAX_OPEN = 6  # sessions open per host at most, busy or idle


def make_line(words: Sequence[str]) -> bytes:
    """Return ``words`` as one line that ``eval "set -- LINE"`` in the helper turns back
    into the same words: each shell-quoted, a newline written as ``"$NL"`` (pure).

    Raises ValueError for a word with a NUL byte (no shell can hold it).
    """
    if any("\0" in word for word in words):
        raise ValueError("a command word contains a NUL byte")
    quoted = ('"$NL"'.join(shlex.quote(part) for part in word.split("\n")) for word in words)
    return (" ".join(quoted) + "\n").encode("utf-8", "surrogateescape")


def parse_answer(buffer: bytes, mark: bytes) -> tuple[CommandResult, bytes] | None:
    """Return the first complete answer in ``buffer`` and what follows it, or None if it is
    not complete yet (pure). An answer is the verb's stdout, ``\\nMARK STATUS\\n``, its
    stderr and ``\\nMARK.\\n``."""
    head = buffer.find(b"\n" + mark + b" ")
    if head < 0:
        return None
    status_end = buffer.find(b"\n", head + len(mark) + 2)
    tail = buffer.find(b"\n" + mark + b".\n", head + 1)
    if status_end < 0 or tail < 0:
        return None
    status = int(buffer[head + len(mark) + 2 : status_end])
    result = CommandResult(status, buffer[:head], buffer[status_end + 1 : tail])
    return result, buffer[tail + len(mark) + 3 :]


class SessionEnded(HostError):
    """The session's shell or channel went away before its answer was complete."""


class Session:
    """One running ``serve``: ask it one verb at a time."""

    def __init__(self, stream: Stream, label: str) -> None:
        self.stream = stream
        self.label = label
        self.mark = secrets.token_hex(16).encode()
        self.broken = False
        self._buffer = b""
        stream.send(self.mark + b"\n")

    def call(self, words: Sequence[str], timeout: float) -> CommandResult:
        """Run the verb ``words`` and return its result whatever its status.

        Raises HostError (transient) if no whole answer comes within ``timeout`` s or the
        session ended; the session is then marked broken. Raises HostError (permanent) for
        a word no shell can hold (a NUL byte).
        """
        deadline = time.monotonic() + timeout
        try:
            line = make_line(words)
        except ValueError as exc:  # nothing was sent: the session is as good as before
            raise HostError(f"{self.label}: {words[0]}: cannot send it: {exc}") from exc
        try:
            try:
                self.stream.send(line)
            except HostError as exc:
                raise SessionEnded(str(exc), transient=True) from exc
            while (answer := parse_answer(self._buffer, self.mark)) is None:
                chunk = self.stream.recv(max(0.0, deadline - time.monotonic()))
                if not chunk:
                    raise SessionEnded("the helper session ended", transient=True)
                self._buffer += chunk
        except HostError as exc:
            self.broken = True
            kind = SessionEnded if isinstance(exc, SessionEnded) else HostError
            raise kind(f"{self.label}: {words[0]}: {exc}", transient=True) from exc
        result, self._buffer = answer
        return result


class SessionPool:
    """The sessions of the host named ``label``; ``start`` opens a new one."""

    def __init__(self, start: Callable[[], Stream], label: str) -> None:
        self._start = start
        self._label = label
        self._lock = threading.Lock()
        self._idle: list[Session] = []
        self._free = threading.BoundedSemaphore(MAX_OPEN)  # one per open or openable session

    def call(self, words: Sequence[str], timeout: float) -> CommandResult:
        """Run the verb ``words`` in an idle session (or a new one); return its result.

        Raises what the transport raises when a session cannot be started (HostKeyError
        included), and a transient HostError when none is free or it does not answer in
        time.
        """
        deadline = time.monotonic() + timeout
        if not self._free.acquire(timeout=timeout):
            raise HostError(
                f"{self._label}: {words[0]}: all {MAX_OPEN} helper sessions stayed busy for "
                f"{timeout:g} s",
                transient=True,
            )
        try:
            with self._lock:
                session = self._idle.pop() if self._idle else None
            if session is not None:
                try:
                    return session.call(words, max(0.0, deadline - time.monotonic()))
                except SessionEnded as exc:
                    # An idle session can die unseen (a dropped connection, a killed shell):
                    # the verb goes to a new one. Verbs are safe to repeat (each checks its
                    # run dir).
                    log.info("%s; retrying in a new session", exc)
                finally:
                    self._put_back(session)
            stream = self._start()
            try:
                session = Session(stream, self._label)
            except HostError:  # it took no mark: never used
                stream.close()
                raise
            try:
                return session.call(words, max(0.0, deadline - time.monotonic()))
            finally:
                self._put_back(session)
        finally:
            self._free.release()

    def _put_back(self, session: Session) -> None:
        """Keep ``session`` for the next verb, or close it if it is broken."""
        if session.broken:
            session.stream.close()
            return
        with self._lock:
            self._idle.append(session)

    def close(self) -> None:
        """Close every idle session."""
        with self._lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.stream.close()
