"""Reachability and power of a host run through the helper: the answer to a trivial
command, Wake-on-LAN, and the power-off when idle (``shutdown_after``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from agent.hosts.base import HostError
from agent.hosts.transport import CommandResult, Transport
from agent.schema import HostConfig

log = logging.getLogger(__name__)

# A host that answered a command this recently is taken as up without asking again: in a
# burst of short runs every start would otherwise pay a round trip (a process, locally).
ANSWER_HOLDS = 1.0  # s


class PowerControl:
    """The power half of :class:`agent.hosts.shell.ShellHost` (a base class of it): uses
    its ``name``, ``config``, ``transport`` and ``_helper``."""

    name: str
    config: HostConfig
    transport: Transport

    def __init__(self) -> None:
        self._last_no_answer = "not tried yet"
        self._asleep = False  # as far as the agent knows: powered off by it, or no answer
        self._power_lock = threading.Lock()
        self._powered_off = False
        self._last_idle = 0.0
        self._answered_at: float | None = None  # monotonic time of the last answer

    if TYPE_CHECKING:  # ShellHost's: one helper verb run through the transport

        def _helper(
            self, verb: str, *args: str, stdin: bytes | None = None, timeout: float | None = None
        ) -> CommandResult: ...

    def awake(self) -> bool:
        """Return False if the agent powered the host off or it last did not answer."""
        return not self._asleep

    def answered(self) -> None:
        """Note that the host has just run a command successfully."""
        self._answered_at = time.monotonic()

    def reachable(self) -> bool:
        """Return True if the host runs a trivial command now (or ran one within the last
        ``ANSWER_HOLDS`` s and is not known to be asleep), False if it does not answer.

        Raises HostKeyError and other permanent HostErrors (a refused login): waiting
        would not help, so they must not look like a server that is still asleep.
        """
        last = self._answered_at
        if not self._asleep and last is not None and time.monotonic() - last < ANSWER_HOLDS:
            return True
        try:
            ok = self.transport.run(["true"], timeout=15.0).exit_code == 0
        except HostError as exc:
            if not exc.transient:
                raise
            self._last_no_answer = str(exc)
            ok = False
        else:
            if not ok:
                self._last_no_answer = "`true` failed on the host"
        self._asleep = not ok
        if ok:
            self.answered()
        return ok

    def wake(self) -> None:
        """Send a Wake-on-LAN packet if the host has ``wake_mac``; otherwise do nothing."""
        if not self.config.wake_mac:
            return
        from agent.hosts.wol import send_magic_packet

        try:
            send_magic_packet(
                self.config.wake_mac, self.config.wake_broadcast, self.config.wake_port
            )
        except OSError as exc:
            raise HostError(f"{self.name}: cannot send Wake-on-LAN: {exc}", transient=True) from exc

    def wait_ready(self, timeout: float) -> None:
        """Poll with backoff until the host answers; raise HostError after ``timeout`` s.

        The Wake-on-LAN packet (if configured) is sent again before every retry: it is one
        UDP datagram and may be lost. The error names the host and its last failure.
        """
        deadline = time.monotonic() + timeout
        delay = 0.5
        while not self.reachable():
            if time.monotonic() >= deadline:
                raise HostError(
                    f"{self.name} did not answer within wake_timeout ({timeout:g} s); "
                    f"last try: {self._last_no_answer}",
                    transient=True,
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 10.0)
            self.wake()

    def run_starting(self) -> None:
        """Cancel a pending power-off (only for hosts that power off when idle).

        A failing cancel command is logged, not raised: the run itself can go on, and
        the agent's own power-off is only ever sent when no run is active.
        """
        if self.config.shutdown_after is None:
            return
        try:
            self._helper("power", self.config.cancel_shutdown_command)
        except HostError as exc:
            log.warning("%s: cancel_shutdown_command failed: %s", self.name, exc)

    def idle_for(self, seconds: float) -> None:
        """Power the host off once per idle period of ``shutdown_after`` seconds.

        Called on every agent tick with the length of the current idle period; cheap
        unless the command is due. A shorter ``seconds`` than last time means a new idle
        period (a run came and went) and arms the power-off again. A failing command is
        logged, not retried: a server that went down while being told to is the common
        case, and retrying every tick would flood the log.
        """
        after = self.config.shutdown_after
        if after is None:
            return
        with self._power_lock:
            if seconds < self._last_idle:
                self._powered_off = False
            self._last_idle = seconds
            if seconds < after or self._powered_off:
                return
            self._powered_off = True
            self._asleep = True
        log.info("%s: idle for %.0f s, running shutdown_command", self.name, seconds)
        try:
            self._helper("power", self.config.shutdown_command, timeout=30.0)
        except HostError as exc:
            log.warning("%s: shutdown_command failed: %s", self.name, exc)
