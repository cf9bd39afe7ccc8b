"""Notices received for real: a JSON webhook on a loopback HTTP server, an e-mail on a
loopback SMTP server (aiosmtpd), a dead webhook, a stalled run; and which URLs are allowed."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from agent import notify, runinfo
from agent.agentfile import load_agent_config
from agent.problems import InvalidFile
from agent.settings import read_project_layer

from shares import drop, make_project, run_once, write_config
from testbed import free_port


class Webhook:
    """An HTTP server on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DeadWebhook:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"json://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.accepted: list[float] = []
        self.held: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(time.time())
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class Mailbox:
    """Keeps every message sent to the SMTP server."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, str]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, f"mailto://127.0.0.1:{port}?from=droprun@example.test&to=ops@example.test"
    controller.stop()


def notify_config(tmp_path: Path, *urls: str, extra: str = "") -> Path:
    listed = ", ".join(f'"{u}"' for u in urls)
    return write_config(tmp_path, extra=f"[notify]\nurls = [{listed}]\n{extra}")


FAIL = "#!/bin/sh\necho 'epoch 1/1  loss 0.5'\necho 'about to fail'\nexit 3\n"


def test_a_failed_run_is_told_by_webhook_and_by_mail(tmp_path, webhook, mailbox):
    box, mail_url = mailbox
    config = notify_config(tmp_path, webhook.url, mail_url)
    project = make_project(tmp_path / "share", "vision", {"run.sh": FAIL})
    drop(project, 'name = "lr sweep"\n')
    run_once(config)
    assert [m["title"] for m in webhook.received] == ['droprun: vision/run_0 "lr sweep" failed']
    body = webhook.received[0]["message"]
    assert "state: failed (the script exited with code 3)" in body
    assert "exit code: 3" in body and "about to fail" in body
    assert f"run folder: {project / 'results' / 'run_0'}" in body
    assert len(box.messages) == 1
    mail = message_from_bytes(box.messages[0])
    assert mail["Subject"] == 'droprun: vision/run_0 "lr sweep" failed'
    assert mail["To"] == "ops@example.test"
    records = runinfo.load(project / "results/run_0/run.info").notify
    assert records["failed"].startswith(f"{notify.shown(webhook.url)}: sent; mailto://127.0.0.1")
    assert "/hook" not in records["failed"]  # only scheme and host reach the share


def test_only_the_states_of_on_are_told(tmp_path, webhook):
    config = notify_config(tmp_path, webhook.url, extra='on = ["failed"]\n')
    project = make_project(tmp_path / "share", "p", {"run.sh": "#!/bin/sh\necho ok\n"})
    drop(project, "")
    run_once(config)
    assert webhook.received == []
    assert runinfo.load(project / "results/run_0/run.info").notify == {}


def test_a_dead_webhook_never_holds_up_the_run_or_other_notices(tmp_path, mailbox):
    box, mail_url = mailbox
    dead = DeadWebhook()
    try:
        config = notify_config(tmp_path, dead.url, mail_url)
        project = make_project(tmp_path / "share", "p", {"run.sh": "#!/bin/sh\necho ok\n"})
        drop(project, "")
        run_once(config)
        returned = time.time()
    finally:
        dead.close()
    info = runinfo.load(project / "results/run_0/run.info")
    assert info.state == runinfo.SUCCEEDED
    # The run had ended before the notice even reached the dead service...
    assert dead.accepted and info.end_epoch is not None and info.end_epoch <= dead.accepted[0]
    assert len(dead.accepted) == notify.TRIES
    # ...and the agent was done a few seconds after the end, tries and timeouts included.
    assert returned - info.end_epoch < notify.FLUSH_SECONDS + 2 * notify.TIMEOUT + 3
    assert len(box.messages) == 1
    assert (
        f"{notify.shown(dead.url)}: failed after {notify.TRIES} tries" in info.notify["succeeded"]
    )
    assert "mailto://127.0.0.1" in info.notify["succeeded"]


def test_a_stalled_run_is_told_once(tmp_path, webhook):
    config = notify_config(tmp_path, webhook.url, extra="stalled_after = 2\n")
    script = "#!/bin/sh\necho started\nsleep 12\necho done\n"
    project = make_project(tmp_path / "share", "p", {"run.sh": script})
    drop(project, "")
    run_once(config)
    titles = [m["title"] for m in webhook.received]
    assert len([t for t in titles if "stalled" in t]) == 1
    assert titles[-1] == "droprun: p/run_0 succeeded"
    records = runinfo.load(project / "results/run_0/run.info").notify
    assert set(records) == {"stalled", "succeeded"}


def test_which_urls_a_project_may_name(tmp_path):
    config = load_agent_config(
        notify_config(tmp_path, "mailto://u:p@mail.example.test", "syslog://", "windows://")
    )
    assert len(config.notify.urls) == 3  # the admin may name any scheme
    project = tmp_path / "p.toml"
    project.write_text('[notify]\nurls = ["ntfys://ntfy.sh/t", "jsons://hooks.example.test/x"]\n')
    assert read_project_layer(project, None)["notify"]["urls"] == (
        "ntfys://ntfy.sh/t",
        "jsons://hooks.example.test/x",
    )
    for bad, says in (
        ("mailto://u:p@mail.example.test", 'scheme "mailto://"'),
        ("windows://", 'scheme "windows://"'),
        ("json://127.0.0.1:8080/admin", 'host "127.0.0.1"'),
        ("jsons://localhost/x", 'host "localhost"'),
        ("json://[::1]/x", 'host "::1"'),
        ("not a url", "not an Apprise URL"),
    ):
        project.write_text(f'timeout = "1h"\n[notify]\nurls = ["{bad}"]\n')
        with pytest.raises(InvalidFile) as caught:
            read_project_layer(project, None)
        text = str(caught.value)
        assert "notify.urls" in text and says in text and ":3" in text, text
    project.write_text('[notify]\non = ["failed"]\n')
    with pytest.raises(InvalidFile, match="unknown key"):
        read_project_layer(project, None)
    bad_agent = notify_config(tmp_path, "ntfys://x/y", extra='on = ["faild"]\n')
    with pytest.raises(InvalidFile, match='did you mean "failed"'):
        load_agent_config(bad_agent)
