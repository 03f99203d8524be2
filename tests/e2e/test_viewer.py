"""The live viewer (``GET /viewer``) in a real browser, against the real service.

Debian's Chromium (``chromium`` on the PATH, or ``$CHROMIUM``), headless, driven by Playwright for
Python; the service is the real one under Gunicorn on the session's real Kafka
and collector (fixtures in ``tests/conftest.py``). Every test also checks what
a person would not see: the page logs no console error, requests nothing from
any other host, gets no HTTP error, and every WebSocket message it sends or
receives is valid under ``docs/ws-protocol.schema.json``.

``UPDATE_SCREENSHOT=1`` also rewrites ``docs/viewer.png`` (1280x800, demo data).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest

from devstack.kafka import KafkaBroker
from devstack.ports import free_port
from devstack.service import ROOT, ServiceProcess
from tests.auth_keys import AUDIENCE, ISSUER, SECRET, hs256
from tests.conftest import LiveClient, produce

try:
    from playwright import sync_api
    expect = sync_api.expect
except ImportError:  # reported by the requires mark below
    sync_api = expect = None

# The same lookup as .ci/run's `command -v chromium` (Debian's package puts it at /usr/bin/chromium).
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = [
    pytest.mark.requires(sync_api is not None, reason="playwright is not installed (requirements-dev.txt)"),
    pytest.mark.requires(os.access(CHROMIUM, os.X_OK),
                         reason=f"{CHROMIUM} not found: these tests drive Debian's Chromium (apt-get install chromium)"),
    pytest.mark.timeout(120),
]

SCHEMA = json.loads((ROOT / "docs" / "ws-protocol.schema.json").read_text())
CLIENT_SCHEMA = {**{k: v for k, v in SCHEMA.items() if k != "oneOf"}, "$ref": "#/$defs/client_message"}
SCREENSHOT = ROOT / "docs" / "viewer.png"
ROWS = "#rows tr.rec"
SECOND = 1000  # Playwright timeouts are in milliseconds
# What Chromium itself logs while the server is unreachable: failed upgrades and /health probes.
OUTAGE_CONSOLE = (r"net::ERR_(CONNECTION_\w+|SOCKET_NOT_CONNECTED|EMPTY_RESPONSE)"
                  r"|WebSocket connection to 'ws://[^']+' failed")


def values(run: str, start: int, count: int, levels: tuple[str, ...] = ("info", "error", "debug", "warn"),
           pad: int = 0) -> list[bytes]:
    return [json.dumps({"run": run, "seq": i, "level": levels[i % len(levels)], "service": f"svc-{i % 3}",
                        "message": f"{run} event {i}" + (" " + "x" * pad if pad else ""),
                        "user": {"id": i % 5}, "trace_id": f"{i + 1:032x}", "span_id": f"{i + 1:016x}"}).encode()
            for i in range(start, start + count)]


@dataclass
class Viewer:
    """One page on /viewer, and everything it did."""

    page: Any
    kafka: KafkaBroker
    topic: str
    service: ServiceProcess
    origin: str  # the host:port the page was served from
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    received: list[dict] = field(default_factory=list)
    sent: list[dict] = field(default_factory=list)

    def attach(self) -> None:
        page = self.page
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("response", lambda r: r.status >= 400 and self.bad_responses.append(f"{r.status} {r.url}"))
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws: Any) -> None:
        self.websockets.append(ws.url)
        ws.on("framereceived", lambda payload: self.received.append(json.loads(payload)))
        ws.on("framesent", lambda payload: self.sent.append(json.loads(payload)))

    def open(self, query: str = "", state: str = "live") -> Any:
        response = self.page.goto(f"http://{self.origin}/viewer" + (f"?{query}" if query else ""))
        self.wait_state(state)
        return response

    # -- Kafka --------------------------------------------------------------------------

    def produce(self, start: int, count: int, **kwargs: Any) -> None:
        produce(self.kafka, self.topic, values(self.run, start, count, **kwargs), partition_of=lambda i: 0)

    # -- the page -----------------------------------------------------------------------

    def wait_state(self, state: str, timeout: float = 15) -> None:
        expect(self.page.locator("#status")).to_have_attribute("data-state", state, timeout=timeout * SECOND)

    def wait_rows(self, count: int, timeout: float = 15) -> None:
        expect(self.page.locator(ROWS)).to_have_count(count, timeout=timeout * SECOND)

    def wait_received(self, count: int, timeout: float = 15) -> None:
        expect(self.page.locator("#count-received")).to_have_text(f"{count:,}", timeout=timeout * SECOND)

    def messages(self) -> list[str]:
        return self.page.locator(f"{ROWS} td.m").all_inner_texts()

    def seqs(self) -> list[int]:
        return [int(m.split()[2]) for m in self.messages() if m.startswith(self.run)]

    def levels(self) -> list[str]:
        return self.page.locator(f"{ROWS} td.l").all_inner_texts()

    # -- what no one sees ---------------------------------------------------------------

    def check(self, allowed_console: str | None = None) -> None:
        """No page error, no console error (but ``allowed_console``), no other host, valid protocol."""
        assert not self.page_errors, self.page_errors
        errors = [e for e in self.console_errors if not (allowed_console and re.search(allowed_console, e))]
        assert not errors, errors
        assert not self.bad_responses, self.bad_responses
        assert self.requests, "the page made no request at all?"
        for url in self.requests:
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc) == ("http", self.origin), f"request to another host: {url}"
        for url in self.websockets:
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc, parts.path) == ("ws", self.origin, "/ws"), url
        validator = jsonschema.Draft202012Validator(SCHEMA)
        for message in self.received:
            validator.validate(message)
        client = jsonschema.Draft202012Validator(CLIENT_SCHEMA)
        for message in self.sent:
            client.validate(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def viewer(browser: Any, kafka: KafkaBroker, topic: Callable[..., str], service: Callable[..., ServiceProcess]
           ) -> Iterator[Callable[..., Viewer]]:
    """Factory: a topic, the service on it, and a fresh page (whose own origin /ws accepts)."""
    contexts: list[Any] = []

    def start(partitions: int = 1, *, origin_port: int | None = None, name: str | None = None,
              **env: str) -> Viewer:
        if name:
            kafka.create_topic(name, partitions)
        else:
            name = topic(partitions)
        port = free_port()
        svc = service(name, port=port, **env)
        context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
        contexts.append(context)
        context.set_default_timeout(15 * SECOND)
        v = Viewer(context.new_page(), kafka, name, svc, f"127.0.0.1:{origin_port or port}")
        v.attach()
        return v

    yield start
    for context in contexts:
        context.close()


def hub_witness(v: Viewer, ws_client: Callable[..., LiveClient]) -> Callable[[int], None]:
    """A client of the service itself, beside the page: ``sent(seq)`` returns once the
    service has sent this run's record ``seq`` to its clients, so every record before it
    too (one partition, in order), and has them in its replay ring (the hub adds a batch to
    the ring before it sends it). Connect it before producing: it starts at the live end."""
    witness = ws_client(v.service.ws_url)

    def sent(seq: int) -> None:
        witness.wait_records(1, where=lambda r: r["attributes"].get("run") == v.run
                             and r["attributes"]["seq"] == seq)
    return sent


# -- tests -------------------------------------------------------------------------------


def test_page_loads_clean_shows_records_and_expands_them(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    response = v.open()
    assert response.status == 200
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    page = v.page
    assert page.title().startswith("Live logs")
    expect(page.locator("#status-text")).to_have_text("Live")

    began = time.monotonic()
    v.produce(0, 20)
    v.wait_rows(20, timeout=10)
    latency = time.monotonic() - began
    assert v.seqs() == list(range(20))
    assert v.levels()[:4] == ["INFO", "ERROR", "DEBUG", "WARN"]
    first = page.locator(ROWS).first
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", first.locator("td.t").inner_text())
    assert first.locator("td.s").inner_text() == "svc-0"
    expect(page.locator("#count-received")).to_have_text("20")
    expect(page.locator("#count-shown")).to_have_text("20")
    print(f"20 records produced -> 20 rows in the page: {latency:.2f} s")

    # Click: every field, the attributes and the Kafka position.
    first.click()
    expect(first).to_have_attribute("aria-expanded", "true")
    details = page.locator("#rows tr.details")
    expect(details).to_have_count(1)
    text = details.inner_text()
    for expected in ("TOPIC", v.topic, "PARTITION", "OFFSET", "user.id", "run", v.run, "severity 9",
                     f"{v.run} event 0", "TRACE ID", f"{1:032x}", "SPAN ID", f"{1:016x}"):
        assert expected in text, (expected, text)
    # Keyboard: arrows move between records, Enter toggles.
    page.keyboard.press("ArrowDown")
    second = page.locator(ROWS).nth(1)
    expect(second).to_be_focused()
    page.keyboard.press("Enter")
    expect(second).to_have_attribute("aria-expanded", "true")
    expect(details).to_have_count(2)
    page.keyboard.press("Enter")
    expect(second).to_have_attribute("aria-expanded", "false")
    expect(details).to_have_count(1)

    # Every control has a label (an accessible name); status is announced politely.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert unlabelled == []
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.locator("main table thead th").all_inner_texts() == ["TIME", "LEVEL", "SERVICE", "MESSAGE"]

    paths = sorted({urlsplit(url).path for url in v.requests})
    assert paths == ["/api/session", "/viewer", "/viewer/favicon.svg", "/viewer/logtable.js", "/viewer/signin.js",
                     "/viewer/viewer.css", "/viewer/viewer.js", "/viewer/volume.js"]
    assert parse_qs(urlsplit(v.websockets[0]).query) == {"tail": ["100"]}
    v.check()


def test_level_filter_uses_the_server_filter(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    v.open()
    v.produce(0, 8)
    v.wait_rows(8)

    v.page.select_option("#level", "error")
    expect(v.page.locator("#active-filter")).to_have_text("Filter: level ≥ error", timeout=10 * SECOND)
    assert {"type": "subscribe", "level": "error"} in v.sent
    v.produce(8, 44)  # levels cycle info, error, debug, warn: 11 errors, the last one (49) a sentinel
    expect(v.page.locator(f"{ROWS}.lvl-error")).to_have_count(2 + 11)
    # One partition, in order: anything the filter let through would be drawn before 49.
    after = [(seq, level) for seq, level in zip(v.seqs(), v.levels(), strict=True) if seq >= 8]
    assert after == [(seq, "ERROR") for seq in range(8, 52) if seq % 4 == 1]
    expect(v.page.locator("#rows tr.marker-filter")).to_have_text("Filter changed: level ≥ error.")

    # The filter is kept in the page's URL; a reload asks the server for it from the start,
    # and replays (?tail) only matching records.
    assert "level=error" in v.page.url
    v.page.reload()
    v.wait_state("live")
    expect(v.page.locator("#level")).to_have_value("error")
    assert parse_qs(urlsplit(v.websockets[-1]).query) == {"level": ["error"], "tail": ["100"]}
    v.wait_rows(13)
    assert set(v.levels()) == {"ERROR"}
    v.check()


def test_pause_holds_new_rows_and_resume_shows_them(viewer: Callable[..., Viewer],
                                                   ws_client: Callable[..., LiveClient]) -> None:
    v = viewer()
    sent = hub_witness(v, ws_client)
    v.open()
    v.produce(0, 5)
    v.wait_rows(5)

    pause = v.page.locator("#pause")
    pause.click()
    v.wait_state("paused")
    expect(pause).to_have_attribute("aria-pressed", "true")
    expect(pause).to_have_text("Resume")
    v.produce(5, 10)
    sent(14)  # the service sent them all; the paused page holds them back
    assert v.seqs() == list(range(5))
    expect(v.page.locator("#count-received")).to_have_text("5")

    pause.click()
    v.wait_state("live")
    expect(pause).to_have_attribute("aria-pressed", "false")
    v.wait_rows(15)
    assert v.seqs() == list(range(15))
    expect(v.page.locator("#count-dropped")).to_have_text("0")
    assert [m["type"] for m in v.sent] == ["pause", "resume"]
    assert {"type": "paused"} in v.received and {"type": "resumed"} in v.received
    v.check()


def test_paused_too_long_shows_the_dropped_count(viewer: Callable[..., Viewer],
                                                ws_client: Callable[..., LiveClient]) -> None:
    v = viewer(WS_CLIENT_BUFFER_BYTES=str(64 << 10), WS_STALL_TIMEOUT_S="60")
    sent = hub_witness(v, ws_client)
    v.open()
    v.page.locator("#pause").click()
    v.wait_state("paused")
    v.produce(0, 1500, pad=300)  # ~0.5 MB in several batches: most no longer fit in 64 KiB
    sent(1499)  # all of it sent to the paused page's queue (the witness may drop some too)
    v.page.locator("#pause").click()
    expect(v.page.locator("#notices .notice-dropped")).to_have_count(1, timeout=10 * SECOND)
    dropped = int(v.page.locator("#count-dropped").inner_text().replace(",", ""))
    assert dropped >= 1
    # The notice comes at once; rows are drawn at most four times a second, after it.
    expect(v.page.locator(f"{ROWS} td.m").last).to_have_text(re.compile(rf"^{v.run} event 1499\b"))
    shown = v.seqs()
    assert 0 < len(shown) < 1500 and shown == sorted(shown)
    assert shown[-1] == 1499  # the newest batches are the ones kept
    assert "dropped" in v.page.locator("#notices").inner_text()
    expect(v.page.locator("#volume-marks .mark-dropped")).to_have_count(1, timeout=5 * SECOND)
    v.check()


def test_reconnects_to_a_restarted_service_on_the_same_port(viewer: Callable[..., Viewer],
                                                             service: Callable[..., ServiceProcess]) -> None:
    v = viewer()
    v.open()
    v.produce(0, 3)
    v.wait_rows(3)

    old = v.service
    assert old.proc is not None
    os.killpg(old.proc.pid, signal.SIGKILL)  # master and workers: nothing is closed cleanly
    old.proc.wait(10)
    v.wait_state("waiting", timeout=10)
    expect(v.page.locator("#status-text")).to_contain_text("Reconnecting in")
    expect(v.page.locator("#reconnect")).to_be_visible()

    began = time.monotonic()
    port = int(v.origin.rsplit(":", 1)[1])
    v.service = service(v.topic, port=port, wait_ready=False)
    # Its forward reader waits for the killed member to leave the consumer group (the session
    # timeout); the live tail does not.
    v.service.start(ready=lambda health: health["kafka"]["tail"]["state"] == "ok")
    v.wait_state("live", timeout=30)
    print(f"reconnected {time.monotonic() - began:.1f} s after the new service was ready to start")
    # It resumed from the last record it had: ?since=<topic>:0:2.
    assert parse_qs(urlsplit(v.websockets[-1]).query) == {"since": [f"{v.topic}:0:2"]}
    v.produce(10, 3)
    v.wait_rows(6)
    assert v.seqs() == [0, 1, 2, 10, 11, 12]
    expect(v.page.locator("#rows tr.marker-lost")).to_have_count(1)
    expect(v.page.locator("#rows tr.marker-connected")).to_have_count(1)
    # While the service was down, the browser reported the refused connections; nothing else.
    v.check(allowed_console=OUTAGE_CONSOLE)


class CuttableProxy:
    """A TCP relay in front of the service whose connections can be cut and refused."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", port))
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self.open.clear()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv(); close() alone would not
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def test_resume_replays_what_was_missed_and_announces_a_gap(viewer: Callable[..., Viewer],
                                                           ws_client: Callable[..., LiveClient]) -> None:
    # The page goes through a relay that can be cut; the service (and its replay ring of
    # 10 records) keeps running, so the page's ?since= finds what it missed, or a gap.
    relay_port = free_port()
    v = viewer(REPLAY_RECORDS="10", origin_port=relay_port)
    relay = CuttableProxy(relay_port, v.service.port)
    in_ring = hub_witness(v, ws_client)  # in_ring(seq): the page's resume must find it there
    try:
        v.open("tail=0")
        v.produce(0, 3)
        v.wait_rows(3)

        relay.cut()
        v.wait_state("waiting", timeout=10)
        v.produce(3, 4)  # 3..6 are still in the ring when the page comes back
        in_ring(6)
        relay.restore()
        v.wait_state("live", timeout=20)
        assert parse_qs(urlsplit(v.websockets[-1]).query) == {"since": [f"{v.topic}:0:2"]}
        v.wait_rows(7)
        assert v.seqs() == list(range(7))  # in order, no gap, no duplicate
        expect(v.page.locator("#notices .notice-gap")).to_have_count(0)

        relay.cut()
        v.wait_state("waiting", timeout=10)
        v.produce(7, 20)  # 7..26: the ring keeps 17..26; 7..16 are gone
        in_ring(26)
        relay.restore()
        v.wait_state("live", timeout=20)
        assert parse_qs(urlsplit(v.websockets[-1]).query) == {"since": [f"{v.topic}:0:6"]}
        v.wait_rows(17)
        assert v.seqs() == list(range(7)) + list(range(17, 27))
        notice = v.page.locator("#notices .notice-gap")
        expect(notice).to_have_count(1)
        expect(notice).to_contain_text("10 records")
        expect(notice).to_contain_text(f"{v.topic} partition 0, offsets 7–16")
        assert {"type": "gap", "partitions": [{"topic": v.topic, "partition": 0, "from": 7, "to": 16, "reason": "not_in_replay"}]} \
            in v.received
        v.check(allowed_console=OUTAGE_CONSOLE)
    finally:
        relay.close()


def test_history_refused_by_a_small_replay_ring_is_given_up(viewer: Callable[..., Viewer]) -> None:
    # ?tail=100 is more than REPLAY_RECORDS=10: the upgrade is refused (400), which a browser
    # cannot see; the page finds the server up (GET /health) and connects without history.
    v = viewer(REPLAY_RECORDS="10")
    v.open()
    assert [parse_qs(urlsplit(url).query) for url in v.websockets] == [{"tail": ["100"]}, {}]
    v.produce(0, 3)
    v.wait_rows(3)
    expect(v.page.locator("#notices .notice")).to_have_count(0)
    v.check(allowed_console=r"WebSocket connection to 'ws://[^']+' failed: .* response code: 400")


def test_rows_are_capped_oldest_first(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    v.open("max=50")
    v.produce(0, 200)
    v.wait_received(200)
    # Rows join the table a few times a second, after the counter.
    expect(v.page.locator(f"{ROWS} td.m").last).to_have_text(f"{v.run} event 199")
    v.wait_rows(50)
    assert v.seqs() == list(range(150, 200))
    expect(v.page.locator("#count-shown")).to_have_text("50")
    assert v.page.locator("#rows > tr").count() == 50  # no markers or details left over
    # The keyboard still has a way into the rows.
    assert v.page.locator("#rows tr.rec[tabindex='0']").count() == 1
    v.check()


ROW_AT_MIDDLE = """() => { const s = document.getElementById("scroller").getBoundingClientRect();
    const row = document.elementFromPoint(s.left + s.width / 2, s.top + s.height / 2).closest("tr.rec");
    return row && row.querySelector("td.m").textContent; }"""
# Looks at the row in the middle of the view in every frame from now on and keeps each change, so
# that a row that jumps for a frame or two is seen too, not only the one there when the test looks.
# Every frame drawn is looked at: the table changes the rows only in its own animation frame
# callbacks (or in a key or click handler), so what one frame painted is what the next sees first.
WATCH_ROW_AT_MIDDLE = f"""() => {{
    const watch = window.rowAtMiddle = {{ seen: [], frames: 0 }};
    const look = () => {{
        const row = ({ROW_AT_MIDDLE})();
        if (row !== watch.seen[watch.seen.length - 1]) watch.seen.push(row);
        watch.frames += 1;
        requestAnimationFrame(look);
    }};
    requestAnimationFrame(look);
}}"""


def test_a_long_table_draws_only_the_rows_near_the_view(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    v.open("tail=0&max=300")
    v.produce(0, 400)
    v.wait_received(400)
    expect(v.page.locator("#count-shown")).to_have_text("300")
    expect(v.page.locator(f"{ROWS} td.m").last).to_have_text(f"{v.run} event 399")
    # 300 records kept, a few dozen of them in the DOM; the table says how many rows it has.
    # Either frame will do: half a view above the newest rows while the stream lasted (about 25
    # rows), the whole overscan a quarter second later (about 60).
    drawn = v.page.locator(ROWS).count()
    assert 10 < drawn < 150, drawn
    assert v.page.get_attribute("#log", "aria-rowcount") == "301"  # and the head's row
    assert v.page.locator(ROWS).last.get_attribute("aria-rowindex") == "301"

    # The keyboard reaches every record kept: Home the oldest, Page Down ten further, End the newest.
    tab_stop = v.page.locator("#rows tr.rec[tabindex='0']")
    expect(tab_stop).to_have_count(1)
    tab_stop.focus()
    focused = v.page.locator("#rows tr.rec:focus")
    v.page.keyboard.press("Home")
    expect(focused.locator("td.m")).to_have_text(f"{v.run} event 100")
    expect(focused).to_have_attribute("aria-rowindex", "2")
    expect(v.page.locator("#follow")).to_be_visible()  # reading the oldest: no longer following
    v.page.keyboard.press("PageDown")
    expect(focused.locator("td.m")).to_have_text(f"{v.run} event 110")
    v.page.keyboard.press("Enter")
    expect(v.page.locator("#rows tr.details")).to_contain_text(f"{v.run} event 110")

    # Scrolled back a little (reading): records arrive and the oldest leave, above the view, and
    # the row in the middle of the view stays the same, in every frame from the scroll on.
    v.page.locator("#scroller").evaluate(f"s => {{ s.scrollTop = s.scrollHeight / 2; ({WATCH_ROW_AT_MIDDLE})(); }}")
    expect(v.page.locator("#follow")).to_be_visible()
    # A function, not an expression: Playwright evals an expression again on every frame it polls,
    # which the page's CSP (no 'unsafe-eval') refuses once the first try was not already true.
    before = v.page.wait_for_function(ROW_AT_MIDDLE).json_value()  # drawn in the next frame
    assert before and before.startswith(f"{v.run} event 2"), before
    v.produce(400, 20)
    v.wait_received(420)
    # Drawn (new records wait up to a quarter second): the button counts them in the same frame.
    expect(v.page.locator("#follow")).to_have_text("Jump to latest (20 new)")
    expect(v.page.locator(ROWS).filter(has_text=f"{v.run} event 119")).to_have_count(0)  # left the table
    # Two more frames looked at, then everything the view showed since the scroll.
    frames = v.page.evaluate("window.rowAtMiddle.frames")
    v.page.wait_for_function("n => window.rowAtMiddle.frames >= n + 2", arg=frames, timeout=5 * SECOND)
    seen = v.page.evaluate("window.rowAtMiddle.seen")
    assert seen in ([before], [None, before]), seen  # none there until the frame after the scroll
    assert v.page.evaluate(ROW_AT_MIDDLE) == before

    v.page.keyboard.press("End")
    expect(focused.locator("td.m")).to_have_text(f"{v.run} event 419")
    expect(v.page.locator("#follow")).to_be_hidden()  # at the newest: following again
    v.check()


# -- volume chart, rates, links (issue 16) ----------------------------------------------------

CHART_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal", "unknown")


def legend(v: Viewer, level: str) -> Any:
    return v.page.locator(f"#legend button[data-level='{level}']")


def bar_counts(v: Viewer) -> dict[str, int]:
    """What the chart draws: records per level, summed over its bars."""
    pairs = v.page.evaluate("""() => [...document.querySelectorAll('#volume-bars rect.bar')]
        .map(r => [r.dataset.level, Number(r.dataset.count), r.getAttribute('fill')])""")
    counts: dict[str, int] = {}
    for level, count, fill in pairs:
        assert fill == f"url(#pat-{level})"  # a texture per level, not only a colour
        counts[level] = counts.get(level, 0) + count
    return counts


def subscribes(v: Viewer) -> list[dict]:
    return [m for m in v.sent if m["type"] == "subscribe"]


def test_volume_chart_counts_what_arrives_by_level_and_shows_rates(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    v.open()
    v.produce(0, 40, levels=("info", "error", "debug", "warn", "fatal", "trace", "info", "info"))
    produce(v.kafka, v.topic, [b"panic: not JSON at all"], partition_of=lambda i: 0)
    v.wait_received(41)
    expected = {"info": 15, "error": 5, "debug": 5, "warn": 5, "fatal": 5, "trace": 5, "unknown": 1}

    summary = v.page.locator("#volume-summary")
    expect(summary).to_contain_text("41 records", timeout=5 * SECOND)  # redrawn at most every 0.5 s
    assert bar_counts(v) == expected
    for level, count in expected.items():
        expect(legend(v, level).locator(".legend-count")).to_have_text(str(count))
        expect(legend(v, level)).to_have_attribute("aria-pressed", "true")
    # The text alternative: a summary the chart is described by, and the same numbers as a table.
    assert v.page.get_attribute("#volume-chart", "aria-describedby") == "volume-summary"
    assert "info 15, warn 5" in summary.inner_text()
    v.page.locator("#volume-details summary").click()
    table = v.page.locator("#volume-table tbody tr")
    expect(table.first).to_be_visible()
    columns = v.page.evaluate("""() => [...document.querySelectorAll('#volume-table tbody tr')]
        .map(tr => [...tr.querySelectorAll('td')].map(td => Number(td.textContent)))""")
    assert dict(zip(CHART_LEVELS, map(sum, zip(*columns)), strict=True)) == {"trace": 5, "debug": 5, **expected}

    # Redrawing the chart never moves the table (with its table view open, new buckets and all).
    top = v.page.locator("#scroller").bounding_box()["y"]
    v.produce(40, 2000, levels=("info", "warn"))
    v.wait_received(2041)
    expect(legend(v, "info").locator(".legend-count")).to_have_text("1,015", timeout=5 * SECOND)
    assert v.page.locator("#scroller").bounding_box()["y"] == top

    # Rates: records/s received, and the busiest services by name.
    rates = v.page.locator("#rates")
    expect(rates).to_contain_text("records/s")
    assert float(rates.get_attribute("data-rate")) > 0
    expect(rates).to_contain_text("svc-0")
    assert "unknown_service" in rates.inner_text() or rates.inner_text().count("svc-") == 3
    v.check()


def test_level_toggles_in_the_chart_set_the_server_filter(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    v.open()
    v.produce(0, 8)  # info, error, debug, warn
    v.wait_rows(8)
    active = v.page.locator("#active-filter")

    # Hiding info alone: no minimum level leaves out info but keeps debug, so the server keeps
    # sending it and the page hides it (rows already shown too).
    legend(v, "info").click()
    expect(legend(v, "info")).to_have_attribute("aria-pressed", "false")
    expect(active).to_have_text("Filter: everything · hidden here: info")
    expect(v.page.locator("#level")).to_have_value("custom")
    expect(v.page.locator(f"{ROWS}.lvl-info").first).to_be_hidden()
    expect(v.page.locator(f"{ROWS}.lvl-error").first).to_be_visible()
    assert subscribes(v) == []
    assert "levels=trace%2Cdebug%2Cwarn%2Cerror%2Cfatal%2Cunknown" in v.page.url

    # Hiding unknown, trace and debug too: the lowest level shown is warn, which the server filters.
    for level in ("unknown", "trace", "debug"):
        legend(v, level).click()
    expect(active).to_have_text("Filter: level ≥ warn", timeout=10 * SECOND)
    assert subscribes(v) == [{"type": "subscribe", "level": level} for level in ("trace", "debug", "warn")]
    assert {"type": "subscribed", "filter": {"level": "warn"}} in v.received
    expect(v.page.locator("#level")).to_have_value("warn")
    assert "level=warn" in v.page.url and "levels=" not in v.page.url
    subscribed_at = v.received.index({"type": "subscribed", "filter": {"level": "warn"}})
    v.produce(8, 40)
    expect(v.page.locator(f"{ROWS}.lvl-warn")).to_have_count(2 + 10)
    expect(v.page.locator(f"{ROWS}.lvl-error")).to_have_count(2 + 10)
    arrived = [r["level"] for m in v.received[subscribed_at:] if m["type"] == "logs" for r in m["records"]]
    assert sorted(set(arrived)) == ["error", "warn"] and len(arrived) == 20  # the server left the rest out

    # A bar: clicking the warn part of one hides warn, so the server filter becomes error.
    expect(v.page.locator("#volume-summary")).to_contain_text("28 records", timeout=5 * SECOND)
    v.page.locator("#volume-bars rect.bar.lvl-warn").last.click()
    expect(active).to_have_text("Filter: level ≥ error", timeout=10 * SECOND)
    assert subscribes(v)[-1] == {"type": "subscribe", "level": "error"}
    expect(v.page.locator(f"{ROWS}.lvl-warn").first).to_be_hidden()

    # The keyboard: the legend's entries are buttons.
    legend(v, "warn").focus()
    v.page.keyboard.press("Enter")
    expect(active).to_have_text("Filter: level ≥ warn", timeout=10 * SECOND)
    legend(v, "fatal").focus()
    v.page.keyboard.press("Space")
    expect(legend(v, "fatal")).to_have_attribute("aria-pressed", "false")
    expect(active).to_have_text("Filter: level ≥ warn · hidden here: fatal")
    v.check()


def test_a_gap_is_marked_on_the_chart_where_it_happened(viewer: Callable[..., Viewer]) -> None:
    # A link that resumes from offset 5 (since=…:4), while the replay ring keeps only 20..29.
    v = viewer(REPLAY_RECORDS="10")
    v.open("tail=0")
    v.produce(0, 30)
    v.wait_rows(30)  # the service has read them all
    v.open(f"since={v.topic}:0:4")
    assert parse_qs(urlsplit(v.websockets[-1]).query) == {"since": [f"{v.topic}:0:4"]}
    v.wait_rows(10)
    assert v.seqs() == list(range(20, 30))
    expect(v.page.locator("#notices .notice-gap")).to_contain_text("offsets 5–19")
    mark = v.page.locator("#volume-marks .mark-gap")
    expect(mark).to_have_count(1, timeout=5 * SECOND)
    expect(mark.locator("text")).to_have_text("gap")  # named, not only coloured
    expect(v.page.locator("#volume-summary")).to_contain_text("gap at")
    # The mark sits on the time axis, inside the plot.
    box, chart = mark.locator("rect").bounding_box(), v.page.locator("#volume-chart").bounding_box()
    assert chart["x"] < box["x"] <= chart["x"] + chart["width"]
    assert f"since={v.topic}%3A0%3A4" in v.page.url  # reloading shows the same view
    v.check()


def test_the_url_reopens_the_same_view(viewer: Callable[..., Viewer], browser: Any) -> None:
    v = viewer()
    v.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    v.open()
    v.page.fill("#service", "svc-1")
    v.page.fill("#q", "event")
    v.page.locator("#filters button[type=submit]").click()
    for level in ("unknown", "trace", "info"):
        legend(v, level).click()
    described = "Filter: level ≥ debug · service svc-1 · text “event” · hidden here: info"
    expect(v.page.locator("#active-filter")).to_have_text(described, timeout=10 * SECOND)
    query = parse_qs(urlsplit(v.page.url).query)
    opened = query.pop("opened")[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", opened)
    assert query == {"level": ["debug"], "levels": ["debug,warn,error,fatal"], "service": ["svc-1"],
                     "q": ["event"], "tail": ["100"]}
    v.page.locator("#copy-link").click()
    expect(v.page.locator("#copy-link")).to_have_text("Copied")
    link = v.page.evaluate("navigator.clipboard.readText()")
    assert link == v.page.url
    v.produce(0, 12)  # svc-1: seqs 1, 4, 7, 10 (error, info, warn, debug); info arrives, hidden here
    v.wait_received(4)
    v.wait_rows(3)

    # Someone else opens the link: same filter, same levels, same start time, history by tail=.
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        other = Viewer(context.new_page(), v.kafka, v.topic, v.service, v.origin, run=v.run)
        other.attach()
        other.page.goto(link)
        other.wait_state("live")
        assert other.page.url == link
        assert parse_qs(urlsplit(other.websockets[0]).query) == {
            "level": ["debug"], "service": ["svc-1"], "q": ["event"], "tail": ["100"]}
        expect(other.page.locator("#active-filter")).to_have_text(described)
        expect(other.page.locator("#level")).to_have_value("custom")
        expect(other.page.locator("#service")).to_have_value("svc-1")
        expect(other.page.locator("#q")).to_have_value("event")
        for level in CHART_LEVELS:
            pressed = "false" if level in ("unknown", "trace", "info") else "true"
            expect(legend(other, level)).to_have_attribute("aria-pressed", pressed)
        expect(other.page.locator("#opened")).to_have_text(v.page.locator("#opened").inner_text())
        other.wait_received(4)
        other.wait_rows(3)
        assert other.seqs() == v.seqs() == [1, 7, 10]
        other.check()
    finally:
        context.close()
    v.check()


def test_a_record_copies_as_json_and_links_to_its_position(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    v.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    v.open("tail=0")
    v.produce(0, 10)
    v.wait_rows(10)
    row = v.page.locator(ROWS).nth(6)
    row.click()
    details = v.page.locator("#rows tr.details")
    details.get_by_role("button", name="Copy as JSON").click()
    expect(details.get_by_role("button", name="Copied")).to_be_visible()
    copied = json.loads(v.page.evaluate("navigator.clipboard.readText()"))
    sent = [r for m in v.received if m["type"] == "logs" for r in m["records"]]
    assert copied == sent[6] and copied["attributes"]["seq"] == 6

    link = details.get_by_role("link", name="Open the stream from this record")
    href = link.get_attribute("href")
    assert parse_qs(urlsplit(href).query) == {"since": [f"{v.topic}:0:{copied['offset'] - 1}"]}
    link.focus()
    v.page.keyboard.press("Enter")  # the keyboard follows it too
    v.wait_state("live")
    assert parse_qs(urlsplit(v.websockets[-1]).query) == {"since": [f"{v.topic}:0:{copied['offset'] - 1}"]}
    v.wait_rows(4)
    assert v.seqs() == [6, 7, 8, 9]  # from that record on, replayed
    v.check()


def test_dark_scheme_and_every_control_reached_by_the_keyboard(viewer: Callable[..., Viewer]) -> None:
    v = viewer()
    v.page.emulate_media(color_scheme="dark")
    v.open()
    v.produce(0, 4)
    v.wait_rows(4)
    background = v.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)"
    info_fill = v.page.evaluate("getComputedStyle(document.querySelector('#pat-info .pat-bg')).fill")
    assert info_fill == "rgb(46, 160, 67)"  # the chart follows the scheme too

    controls = v.page.evaluate("""() => [...document.querySelectorAll(
        'button, input, select, summary, a[href], tr.rec[tabindex="0"]')]
        .filter(e => e.getClientRects().length && !e.closest('[hidden]'))
        .map(e => e.id || e.dataset.level || e.textContent.trim())""")
    reached: list[str] = []
    v.page.locator("body").focus()
    for _ in range(len(controls) + 5):
        v.page.keyboard.press("Tab")
        reached.append(v.page.evaluate("""() => { const e = document.activeElement;
            return e.id || e.dataset.level || e.textContent.trim(); }"""))
    missing = [c for c in controls if c not in reached]
    assert not missing, (missing, reached)
    for level in CHART_LEVELS:
        assert level in reached
    v.check()


# -- signing in (issue 14) ---------------------------------------------------------------------

AUTH_ENV = {"AUTH_JWT_SECRET": SECRET, "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE}
SELLER = {"sub": "seller-17", "logs.services": ["svc-1"]}
ADMIN = {"sub": "admin-1", "logs.all": True}
# What Chromium logs when api/session refuses a token (the page says it in its own words).
REFUSED_CONSOLE = r"Failed to load resource: the server responded with a status of 40[13]"


def sign_in(v: Viewer, token: str) -> None:
    v.page.fill("#token", token)
    v.page.locator("#signin button[type=submit]").click()


def refusals(v: Viewer) -> list[str]:
    """The page's requests answered 401/403 (expected in these tests), taken out of what check() sees."""
    refused = [r for r in v.bad_responses if r.startswith(("401 ", "403 "))]
    v.bad_responses[:] = [r for r in v.bad_responses if r not in refused]
    return refused


def test_signs_in_from_the_url_fragment_and_sees_its_scope_only(viewer: Callable[..., Viewer]) -> None:
    v = viewer(ACCESS_LOG="true", **AUTH_ENV)
    token = hs256(**SELLER)
    v.page.goto(f"http://{v.origin}/viewer?tail=10#access_token={token}&token_type=Bearer")
    v.wait_state("live")
    # The fragment is gone from the address bar (and so from a copied link), the rest stays.
    assert "#" not in v.page.url and "access_token" not in v.page.url
    assert parse_qs(urlsplit(v.page.url).query)["tail"] == ["10"]
    expect(v.page.locator("#session")).to_be_visible()
    expect(v.page.locator("#session-who")).to_have_text("seller-17")
    expect(v.page.locator("#session-scope")).to_have_text("service svc-1")
    expect(v.page.locator("#session-until")).to_contain_text("until ")
    expect(v.page.locator("#signin")).to_be_hidden()
    # The effective filter: nothing asked, the token's scope applied by the server.
    expect(v.page.locator("#active-filter")).to_have_text("Filter: service svc-1")
    hello = next(m for m in v.received if m["type"] == "hello")
    assert hello["auth"]["subject"] == "seller-17" and hello["filter"] == {"service": ["svc-1"]}
    assert not subscribes(v)  # the page asked for nothing more than it had
    # The token went as the subprotocol (the WebSocket URL has none) and to api/session as a header.
    assert all("access_token" not in url and token not in url for url in v.requests + v.websockets)
    assert parse_qs(urlsplit(v.websockets[0]).query) == {"tail": ["10"]}

    v.produce(0, 9)  # services svc-0, svc-1, svc-2 in turn: 1, 4 and 7 are svc-1's
    v.wait_rows(3)
    assert v.seqs() == [1, 4, 7]
    expect(v.page.locator("#count-received")).to_have_text("3")

    # Kept for the tab: a reload is still signed in, with no fragment.
    assert v.page.evaluate("sessionStorage.getItem('logger-service.token')") == token
    v.page.reload()
    v.wait_state("live")
    expect(v.page.locator("#session-who")).to_have_text("seller-17")

    # Another person's token: the live connection may not change hands (the server refuses the
    # auth message), so the page opens a new connection with it, resuming where it was.
    connections = len(v.websockets)
    v.page.locator("#session-change").click()
    admin = hs256(**ADMIN)
    sign_in(v, admin)
    expect(v.page.locator("#notices .notice-error")).to_contain_text(
        "kept this connection's old token (auth refused: the new token is for another subject)")
    expect(v.page.locator("#session-who")).to_have_text("admin-1")
    v.wait_state("live")
    assert len(v.websockets) == connections + 1
    assert "since" in parse_qs(urlsplit(v.websockets[-1]).query)
    expect(v.page.locator("#session-scope")).to_have_text("all logs")
    expect(v.page.locator("#active-filter")).to_have_text("Filter: everything")
    v.produce(9, 3)  # all three now
    v.wait_rows(6)
    assert v.seqs()[-3:] == [9, 10, 11]
    # Sign out: the connection closes and the page asks for a token.
    v.page.locator("#sign-out").click()
    v.wait_state("signin")
    expect(v.page.locator("#signin-message")).to_contain_text("Signed out")
    assert v.page.evaluate("sessionStorage.getItem('logger-service.token')") is None

    # No server log line carries the token, nor its signature alone.
    log = v.service.log_text()
    assert "/api/session" in log and "/ws" in log  # access lines were written
    for secret in (token, admin):
        assert secret not in log and secret.rsplit(".", 1)[1] not in log
    v.check()


def test_a_token_the_server_refuses_is_named_and_a_valid_one_signs_in(viewer: Callable[..., Viewer]) -> None:
    v = viewer(**AUTH_ENV)
    forged = hs256(secret="not-the-server-secret-but-32-chars-long", **ADMIN)
    v.page.goto(f"http://{v.origin}/viewer#access_token={forged}")
    v.wait_state("signin")
    message = v.page.locator("#signin-message")
    expect(message).to_have_text("Not signed in: the server did not accept this token (bad signature). "
                                 "Paste a valid one.")
    expect(v.page.locator("#token")).to_be_focused()
    expect(v.page.locator("#session")).to_be_hidden()
    assert v.websockets == []  # no connection tried with a token known to be refused
    assert refusals(v) == [f"401 http://{v.origin}/api/session"]

    sign_in(v, hs256(**ADMIN))
    v.wait_state("live")
    expect(v.page.locator("#signin")).to_be_hidden()
    expect(v.page.locator("#session-who")).to_have_text("admin-1")
    expect(v.page.locator("#session-scope")).to_have_text("all logs")
    expect(v.page.locator("#active-filter")).to_have_text("Filter: everything")
    v.produce(0, 3)
    v.wait_rows(3)
    v.check(allowed_console=REFUSED_CONSOLE)


def test_no_token_or_one_without_scope_is_told_what_is_missing(viewer: Callable[..., Viewer]) -> None:
    v = viewer(**AUTH_ENV)
    v.open(state="signin")
    message = v.page.locator("#signin-message")
    expect(message).to_contain_text("Sign in to see the logs: paste an access token")
    expect(v.page.locator("#status-text")).to_have_text("Sign-in needed")

    sign_in(v, hs256(sub="nobody"))  # valid, but no scope claim
    expect(message).to_have_text("Not allowed: this token is valid but grants no logs here "
                                 "(token grants no logs (no scope claim)). Paste a token that does.")
    expect(v.page.locator("#token")).to_have_attribute("aria-invalid", "true")
    v.wait_state("signin")
    assert v.websockets == []
    assert refusals(v) == [f"401 http://{v.origin}/api/session", f"403 http://{v.origin}/api/session"]
    v.check(allowed_console=REFUSED_CONSOLE)


def test_a_token_renewed_before_expiry_keeps_the_connection_and_an_expired_one_closes_it(
        viewer: Callable[..., Viewer]) -> None:
    v = viewer(AUTH_LEEWAY_S="0", **AUTH_ENV)
    short_ttl = 4
    v.page.goto(f"http://{v.origin}/viewer?tail=0#access_token={hs256(ttl=short_ttl, **SELLER)}")
    v.wait_state("live")
    opened_at = time.time()
    # Less than a minute left: the page asks for a fresh token and keeps going meanwhile.
    message = v.page.locator("#signin-message")
    expect(message).to_contain_text("Your sign-in expires at")
    expect(v.page.locator("#token")).not_to_be_focused()  # asked, not grabbed from the reader

    # A fresh token for the same seller goes on the live connection, before the deadline.
    fresh = hs256(ttl=300, **SELLER)
    sign_in(v, fresh)
    expect(v.page.locator("#signin")).to_be_hidden()
    deadline = time.monotonic() + 10
    while not any(m["type"] == "authenticated" for m in v.received):
        assert time.monotonic() < deadline, v.received
        v.page.wait_for_timeout(50)
    assert {"type": "auth", "token": fresh} in v.sent
    time.sleep(max(0.0, opened_at + short_ttl + 1.5 - time.time()))  # past the first token's end
    v.wait_state("live", timeout=0.1)
    assert len(v.websockets) == 1  # the same connection throughout
    v.produce(0, 3)
    v.wait_rows(1)

    # A token that ends in 2 s, given on the live connection too, and not renewed: the server
    # closes the connection (1008 "token expired") and the page says so and waits for a token.
    v.page.locator("#session-change").click()
    sign_in(v, hs256(ttl=2, **SELLER))
    v.wait_state("signin", timeout=15)
    expect(message).to_contain_text("Your token expired at")
    expect(message).to_contain_text("the server closed the connection")
    expect(v.page.locator("#rows tr.marker-lost")).to_have_text("Your token expired: the server closed the connection.")
    v.page.wait_for_timeout(1500)
    assert len(v.websockets) == 1  # not retried with the expired token

    v.produce(3, 3)  # 4 is svc-1's, sent while signed out
    sign_in(v, hs256(ttl=300, **SELLER))
    v.wait_state("live")
    assert parse_qs(urlsplit(v.websockets[-1]).query)["since"] == [f"{v.topic}:0:1"]  # resumed after seq 1
    v.wait_rows(2)
    assert v.seqs() == [1, 4]
    v.check()


SMOOTHNESS_PROBE = """() => {
    // Frames drawn (requestAnimationFrame) and long tasks (> 50 ms on the main thread).
    const received = Number(document.getElementById("count-received").textContent.replace(/,/g, ""));
    const fresh = { frames: 0, gaps: [], longtasks: [], last: performance.now(), received };
    if (window.smoothnessProbe) {  // a second window: start counting again
        Object.assign(window.smoothnessProbe, fresh);
        return;
    }
    const probe = fresh;
    new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) probe.longtasks.push(entry.duration);
    }).observe({ type: "longtask" });
    const tick = (now) => {
        probe.frames += 1;
        probe.gaps.push(now - probe.last);
        probe.last = now;
        requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    window.smoothnessProbe = probe;
}"""

# What Chrome's Performance panel records, less the screenshots.
TRACE_CATEGORIES = ["devtools.timeline", "disabled-by-default-devtools.timeline", "v8.execute", "blink.user_timing",
                    "disabled-by-default-devtools.timeline.frame", "latencyInfo"]

SMOOTHNESS_READ = """() => {
    const p = window.smoothnessProbe;
    const gaps = p.gaps.slice(1).sort((a, b) => a - b);
    const received = Number(document.getElementById("count-received").textContent.replace(/,/g, ""));
    return { frames: p.frames, p99_frame_ms: gaps[Math.floor(gaps.length * 0.99)] || 0,
             max_frame_ms: gaps[gaps.length - 1] || 0, slow_frames: gaps.filter((g) => g > 50).length,
             longtasks: p.longtasks.length, longtask_ms: p.longtasks.reduce((a, b) => a + b, 0),
             max_longtask_ms: Math.max(0, ...p.longtasks), records: received - p.received,
             kept: Number(document.getElementById("count-shown").textContent.replace(/,/g, "")),
             drawn: document.querySelectorAll("#rows tr.rec").length };
}"""


@pytest.mark.skipif(os.environ.get("MEASURE_SMOOTHNESS") != "1",
                    reason="set MEASURE_SMOOTHNESS=1 to measure (docs/BENCHMARKS.md)")
def test_measure_smoothness_at_2000_records_per_second(viewer: Callable[..., Viewer]) -> None:
    """Frames per second and long tasks while 2,000 records/s stream in (numbers, no assertion on them).

    ``SMOOTHNESS_TRACE=path.json`` also records a Chromium performance trace of the busy window
    (open it in Chrome's Performance panel, or summarise it with ``bench.trace_summary``).
    """
    rate, seconds = int(os.environ.get("SMOOTHNESS_RATE", "2000")), 10.0
    v = viewer()
    v.open(os.environ.get("SMOOTHNESS_QUERY", ""))
    v.page.evaluate(SMOOTHNESS_PROBE)
    time.sleep(seconds)  # a measuring window, not a wait: the page counts frames meanwhile
    idle = v.page.evaluate(SMOOTHNESS_READ)

    stop = threading.Event()
    payload = values(v.run, 0, 200, pad=120)  # ~300-byte records, sent over and over

    def paced() -> None:
        producer = v.kafka.producer(linger_ms=5)
        began, sent = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - began) * rate)
            while sent < due:
                producer.send(v.topic, value=payload[sent % len(payload)], partition=0)
                sent += 1
            stop.wait(0.005)
        producer.close()

    thread = threading.Thread(target=paced, daemon=True)
    thread.start()
    try:
        expect(v.page.locator("#count-shown")).to_have_text("1,000", timeout=30 * SECOND)  # the row cap reached
        trace = os.environ.get("SMOOTHNESS_TRACE")
        if trace:
            v.page.context.browser.start_tracing(page=v.page, path=trace, categories=TRACE_CATEGORIES)
        v.page.evaluate(SMOOTHNESS_PROBE)
        time.sleep(seconds)  # the measuring window: the page counts, we wait
        busy = v.page.evaluate(SMOOTHNESS_READ)
        if trace:
            v.page.context.browser.stop_tracing()
    finally:
        stop.set()
        thread.join(10)
    for name, m in (("idle", idle), (f"{rate} records/s", busy)):
        print(f"{name}: {m['frames'] / seconds:.1f} frames/s, p99 frame {m['p99_frame_ms']:.0f} ms, "
              f"max frame {m['max_frame_ms']:.0f} ms, frames > 50 ms: {m['slow_frames']}, "
              f"long tasks: {m['longtasks']} ({m['longtask_ms']:.0f} ms in all, longest {m['max_longtask_ms']:.0f} ms), "
              f"records received: {m['records'] / seconds:.0f}/s, rows kept: {m['kept']} ({m['drawn']} in the DOM)")
    assert busy["records"] > 0 and busy["kept"] == 1000
    v.check()


@pytest.mark.skipif(os.environ.get("UPDATE_SCREENSHOT") != "1", reason="set UPDATE_SCREENSHOT=1 to rewrite docs/viewer.png")
def test_update_screenshot(viewer: Callable[..., Viewer]) -> None:
    """docs/viewer.png: the viewer at 1280x800 with `make demo`'s kind of traffic flowing, signed in."""
    from devstack.demo import MALFORMED, DemoLogs

    v = viewer(name=f"logs-demo-{uuid.uuid4().hex[:4]}", **AUTH_ENV)
    logs = DemoLogs(seed=2026)
    producer = v.kafka.producer(linger_ms=5)
    sent = 0
    try:
        # Nearly five minutes of history, stamped with their own times and replayed on open
        # (?tail=): the chart places them where they happened, with an incident in the middle.
        now = time.time()
        for second in range(280, 4, -1):
            logs.incident = "payments provider outage" if 150 <= second < 165 else None
            per_second = 9 if logs.incident else 2 + (second // 25) % 3
            for k in range(per_second):
                key, value = logs.value(now - second + k / per_second)
                producer.send(v.topic, key=key, value=value)
                sent += 1
        producer.flush()
        v.page.goto(f"http://{v.origin}/viewer?tail=2000#access_token={hs256(ttl=3600, sub='ops@example.com', **{'logs.all': True})}")
        v.wait_state("live")
        for tick in range(40):  # 4 s of traffic in real time, ending in a payments incident
            logs.incident = "payments provider outage" if 31 <= tick < 38 else None
            batch = [logs.value() for _ in range(5 if logs.incident else 3)]
            if tick == 38:
                batch.append((b"legacy-worker", MALFORMED[0]))
            for key, value in batch:
                producer.send(v.topic, key=key, value=value)
            sent += len(batch)
            producer.flush()
            time.sleep(0.1)
    finally:
        producer.close()
    v.wait_received(sent)
    # Rows follow the counter within a quarter second: wait for the last ones (the malformed
    # record, then the three sent after it).
    expect(v.page.locator(f"{ROWS}").nth(-4).locator(".tag")).to_have_count(1)
    opened = v.page.locator(f"{ROWS}.lvl-error").last
    opened.click()  # one record opened, to show its fields
    expect(opened).to_have_attribute("aria-expanded", "true")
    v.page.locator("#scroller").evaluate("s => { s.scrollTop = s.scrollHeight; }")
    v.page.mouse.move(0, 0)
    time.sleep(1.0)  # one more chart redraw (every 0.5 s)
    v.page.screenshot(path=str(SCREENSHOT))
    v.check()
