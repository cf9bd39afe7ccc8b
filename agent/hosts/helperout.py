"""What the helper's verbs print, parsed (pure functions: bytes in, records out)."""

from __future__ import annotations

from agent.hosts.base import Launched, Orphan, ProcStatus


def _number(word: str) -> int | None:
    return None if word == "-" else int(word)


def parse_status(out: bytes) -> ProcStatus:
    """Parse ``status`` output ``STATE PID EXIT TIMED_OUT END START`` (``-``: unknown) (pure)."""
    state, pid, code, timed_out, end, start = out.decode().split()
    return ProcStatus(
        state=state,  # type: ignore[arg-type]
        pid=_number(pid),
        exit_code=_number(code),
        timed_out=timed_out == "1",
        end_epoch=_number(end),
        start_epoch=_number(start),
    )


def parse_polled(out: bytes) -> tuple[ProcStatus, bytes]:
    """Parse ``poll`` or ``stop`` output: a status line, then log bytes (pure)."""
    line, _, log_bytes = out.partition(b"\n")
    return parse_status(line), log_bytes


def parse_launched(out: bytes) -> Launched:
    """Parse ``launch`` output ``PID START`` (pure): the pid is the job handle."""
    pid, start = out.decode().split()
    return Launched(pid, int(pid), _number(start))


def parse_orphans(out: bytes) -> list[Orphan]:
    """Parse ``orphans`` output, ``PATH\0ID\0START\0KB\0ALIVE\0`` per run dir (pure)."""
    fields = out.split(b"\0")
    found = []
    for i in range(0, len(fields) - 4, 5):
        path, run_id, start, kbytes, alive = (
            f.decode(errors="surrogateescape") for f in fields[i : i + 5]
        )
        found.append(
            Orphan(
                path=path,
                run_id=None if run_id == "-" else run_id,
                start_epoch=int(start) if start.isdigit() else None,
                kbytes=int(kbytes or 0),
                alive=alive == "1",
            )
        )
    return found
