"""Filters, the replay ring, and the hub's fan-out by filter (with fake clients)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from dataclasses import replace

import pytest

from logger.config import Settings
from logger.filters import EVERYTHING, Filter, FilterError
from logger.hub import Hub, Refusal, Subscription
from logger.records import decode
from logger.replay import ReplayRing, parse_positions
from tests.ws_frames import FrameReader


def rec(offset: int, level: str = "info", service: str = "api", message: str = "hello", partition: int = 0,
        **attrs):
    value = json.dumps({"level": level, "service": service, "message": message, **attrs}).encode()
    return decode(value, topic="logs", partition=partition, offset=offset)


def test_query_filters():
    f = Filter.from_query({"level": ["warn"], "service": ["api,web", "db"], "q": ["Timeout"],
                           "regex": [r"user \d+"], "attr.http.status": ["500"]})
    assert f.describe() == {"level": "warn", "service": ["api", "db", "web"], "q": "timeout",
                            "regex": r"user \d+", "attributes": {"http.status": "500"}}
    good = rec(1, "error", "web", "TIMEOUT for user 42", http={"status": 500})
    assert f.matches(good)
    assert not f.matches(rec(2, "info", "web", "TIMEOUT for user 42", http={"status": 500}))
    assert not f.matches(rec(3, "error", "other", "TIMEOUT for user 42", http={"status": 500}))
    assert not f.matches(rec(4, "error", "web", "TIMEOUT for user x", http={"status": 500}))
    assert not f.matches(rec(5, "error", "web", "TIMEOUT for user 42", http={"status": 404}))
    assert not f.matches(rec(6, "error", "web", "fine for user 42", http={"status": 500}))


def test_unknown_levels_pass_only_without_a_minimum():
    plain = decode(b"not json", topic="logs", partition=0, offset=1)
    assert EVERYTHING.matches(plain)
    assert not Filter.build(level="debug", services=(), text=None, regex=None, attributes={}).matches(plain)


def test_equal_filters_are_one_group():
    a = Filter.from_query({"level": ["warn"], "service": ["b,a"]})
    b = Filter.from_message({"type": "subscribe", "level": "warn", "service": ["a", "b"]})
    assert a == b and hash(a) == hash(b)
    assert Filter.from_query({"regex": ["x+"]}) == Filter.from_query({"regex": ["x+"]})


@pytest.mark.parametrize("query, reason", [
    ({"level": ["loud"]}, "unknown level"),
    ({"regex": ["(unclosed"]}, "invalid regex"),
    ({"q": ["x" * 201]}, "longer than"),
    ({"service": [",".join(f"s{i}" for i in range(21))]}, "at most 20"),
])
def test_bad_filters_say_why(query, reason):
    with pytest.raises(FilterError, match=reason):
        Filter.from_query(query)


@pytest.mark.parametrize("query", ["level=loud", "tail=-1", "tail=x", "since=garbage", "regex=%28"])
def test_bad_upgrade_queries_are_refused_with_400(query):
    with pytest.raises(Refusal) as refused:
        Subscription.from_query_string(query, 1000)
    assert refused.value.status == "400 Bad Request"


def test_ring_tail_since_and_gaps():
    ring = ReplayRing(max_records=5, max_bytes=1 << 20)
    ring.add([rec(i, "error" if i % 2 else "info") for i in range(10)])  # keeps offsets 5..9
    assert [r.offset for r in ring.tail(EVERYTHING, 3)] == [7, 8, 9]
    errors = Filter.from_query({"level": ["error"]})
    assert [r.offset for r in ring.tail(errors, 10)] == [5, 7, 9]
    assert ring.positions() == ["logs:0:9"]
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 6})
    assert [r.offset for r in missed] == [7, 8, 9] and gaps == []
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 2})
    assert [r.offset for r in missed] == [5, 6, 7, 8, 9]
    assert [g.as_dict() for g in gaps] == [{"topic": "logs", "partition": 0, "from": 3, "to": 4,
                                                "reason": "not_in_replay"}]
    assert ring.since(EVERYTHING, {("logs", 0): 9}) == ([], [])


def test_a_gap_of_exactly_one_record_is_reported_and_none_when_nothing_is_missing():
    ring = ReplayRing(max_records=5, max_bytes=1 << 20)
    ring.add([rec(i) for i in range(10)])  # holds offsets 5..9
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 3})  # offset 4 alone is gone
    assert [g.as_dict() for g in gaps] == [{"topic": "logs", "partition": 0, "from": 4, "to": 4, "reason": "not_in_replay"}]
    assert [r.offset for r in missed] == [5, 6, 7, 8, 9]
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 4})  # the oldest held is the next one
    assert gaps == [] and [r.offset for r in missed] == [5, 6, 7, 8, 9]
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 8})
    assert gaps == [] and [r.offset for r in missed] == [9]


def test_a_ring_with_replay_off_holds_nothing_and_reports_everything_missed_as_a_gap():
    ring = ReplayRing(max_records=0, max_bytes=1 << 20)  # REPLAY_RECORDS=0
    ring.add([rec(i) for i in range(4)])
    assert len(ring) == 0 and ring.tail(EVERYTHING, 10) == []
    assert ring.positions() == ["logs:0:3"]
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 1})
    assert missed == [] and [g.as_dict() for g in gaps] == [{"topic": "logs", "partition": 0, "from": 2, "to": 3, "reason": "not_in_replay"}]


def test_ring_is_bounded_by_bytes():
    ring = ReplayRing(max_records=1000, max_bytes=3000)
    ring.add([rec(i, message="x" * 800) for i in range(20)])
    assert 1 <= len(ring) <= 3


def test_positions_parse():
    assert parse_positions("logs:0:41, logs:2:7") == {("logs", 0): 41, ("logs", 2): 7}
    for bad in ("logs:0", "logs:x:1", ":0:1"):
        with pytest.raises(ValueError):
            parse_positions(bad)


class FakeClient:
    """Records what the hub sends; stands in for a WebSocketConnection."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.droppable: list[bool] = []
        self.subscription = None
        self.closing = self.closed = False
        self.address = "127.0.0.1:50000"
        self.had_backlog = False

    def send(self, frame: bytes, droppable: bool = True) -> None:
        self.frames.append(frame)
        self.droppable.append(droppable)

    def replay(self, frames) -> None:
        self.frames.extend(frames)

    def start(self, owner, initial=b"") -> None:
        self.on_text, self.on_close, self.initial = owner.message_received, owner.connection_closed, initial

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    last_seen = 0.0
    stall_checks = 0
    closed_with: tuple[int, str] | None = None
    aborted = False

    def check_stall(self) -> None:
        self.stall_checks += 1

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)
        self.closing = True

    def abort(self) -> None:
        self.aborted = True

    def messages(self) -> list[dict]:
        reader = FrameReader()
        for frame in self.frames:
            reader.feed(frame)
        return [json.loads(frame.data) for frame in reader.frames()]

    def offsets(self) -> list[int]:
        return [r["offset"] for m in self.messages() if m["type"] == "logs" for r in m["records"]]


def test_hub_encodes_once_per_filter_and_switches_filters_between_batches():
    hub = Hub(Settings())
    everyone = [FakeClient(), FakeClient()]
    errors_only = [FakeClient(), FakeClient()]
    for client in everyone:
        hub.attach(client)
    for client in errors_only:
        hub.attach(client, Subscription(Filter.from_query({"level": ["error"]})))
    hub.broadcast([rec(0, "info"), rec(1, "error"), rec(2, "info")])
    assert everyone[0].frames[-1] is everyone[1].frames[-1], "one encoding shared by the group"
    assert errors_only[0].frames[-1] is errors_only[1].frames[-1]
    assert everyone[0].offsets() == [0, 1, 2] and errors_only[0].offsets() == [1]

    switching = everyone[0]
    frames_before = len(switching.frames)
    switching.on_text(switching, '{"type":"subscribe","level":"error"}')
    assert len(switching.frames) == frames_before + 1, "the answer, and nothing else, before the next batch"
    assert switching.messages()[-1] == {"type": "subscribed", "filter": {"level": "error"}}
    hub.broadcast([rec(3, "info"), rec(4, "error")])
    assert switching.offsets() == [0, 1, 2, 4]
    assert everyone[1].offsets() == [0, 1, 2, 3, 4]
    assert switching.frames[-1] is errors_only[0].frames[-1], "it joined the errors group"


def test_hub_replays_the_tail_then_goes_live_without_gap_or_duplicate():
    hub = Hub(Settings())
    hub.broadcast([rec(i) for i in range(10)])
    late = FakeClient()
    hub.attach(late, Subscription(tail=4))
    hello, replay = late.messages()
    assert hello["type"] == "hello" and hello["positions"] == ["logs:0:9"]
    assert replay["replay"] is True
    hub.broadcast([rec(10), rec(11)])
    assert late.offsets() == [6, 7, 8, 9, 10, 11]


def test_hub_resume_reports_a_gap_when_the_ring_lost_records():
    hub = Hub(Settings(replay_records=3))
    hub.broadcast([rec(i) for i in range(10)])
    client = FakeClient()
    hub.attach(client, Subscription(since={("logs", 0): 4}))
    hello, gap, replay = client.messages()
    assert gap == {"type": "gap", "partitions": [{"topic": "logs", "partition": 0, "from": 5, "to": 6, "reason": "not_in_replay"}]}
    assert [r["offset"] for r in replay["records"]] == [7, 8, 9]


def test_client_messages_get_answers():
    hub = Hub(Settings())
    client = FakeClient()
    hub.attach(client)
    for text, reply in [('{"type":"ping"}', {"type": "pong"}), ('{"type":"pause"}', {"type": "paused"}),
                        ('{"type":"resume"}', {"type": "resumed"}),
                        ('{"type":"subscribe","regex":"("}', "invalid regex"),
                        ('{"type":"dance"}', "unknown message type 'dance'"),
                        ("not json", "messages must be JSON objects with a type")]:
        client.on_text(client, text)
        last = client.messages()[-1]
        assert last == reply if isinstance(reply, dict) else (last["type"] == "error" and reply in last["error"])


def test_a_ring_that_started_late_reports_what_came_before_as_a_gap():
    ring = ReplayRing(max_records=100, max_bytes=1 << 20)
    ring.mark_start("logs", 0, 50)  # a restarted worker reads from offset 50 on
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 40})
    assert missed == [] and [g.as_dict() for g in gaps] == [{"topic": "logs", "partition": 0, "from": 41,
                                                              "to": 49, "reason": "not_in_replay"}]
    ring.add([rec(50), rec(51)])
    missed, gaps = ring.since(EVERYTHING, {("logs", 0): 49})
    assert [r.offset for r in missed] == [50, 51] and gaps == []
    ring.mark_start("logs", 0, 99)  # a reconnect later changes nothing
    assert ring.positions() == ["logs:0:51"]


def test_the_services_own_pages_may_open_websockets():
    hub = Hub(Settings(allowed_hosts=("logs.example.com",)))
    hub.admit({"HTTP_ORIGIN": "http://logs.example.com:6006", "HTTP_HOST": "logs.example.com:6006"})
    with pytest.raises(Refusal):
        hub.admit({"HTTP_ORIGIN": "http://evil.example.com", "HTTP_HOST": "logs.example.com:6006"})


FRONT_ENDS = Settings(cors_origins=("http://localhost:3000", "https://shop.example.com",
                                     "https://admin.example.com:8443"))


def upgrade(origin: str | None, host: str = "logs.example.com:6006") -> dict:
    environ = {"HTTP_HOST": host, "QUERY_STRING": ""}
    if origin is not None:
        environ["HTTP_ORIGIN"] = origin
    return environ


@pytest.mark.parametrize("origin", [
    None,  # not a browser (wscat, a service): no Origin
    "http://localhost:3000",
    "http://localhost:3000/",  # a trailing slash
    "HTTPS://Shop.Example.com",  # scheme and host are case-insensitive
    "https://admin.example.com:8443",
])
def test_a_configured_front_end_or_no_origin_may_open_a_websocket(origin):
    hub = Hub(FRONT_ENDS)
    assert isinstance(hub.admit(upgrade(origin)), Subscription)
    assert hub.counters["refused_origin"] == 0


@pytest.mark.parametrize("origin", [
    "http://localhost:3001",  # the port matters
    "http://localhost",
    "https://localhost:3000",  # so does the scheme
    "http://shop.example.com",
    "https://admin.example.com",  # a configured host on another port
    "https://admin.example.com:8444",
    "http://localhost:3000.evil.com",  # a configured origin as a prefix
    "https://shop.example.com.evil.com",
    "https://evil.com/https://shop.example.com",
    "https://evilshop.example.com",
    "null",  # sandboxed iframes, file:// pages
])
def test_any_other_origin_is_refused_with_403(origin):
    hub = Hub(FRONT_ENDS)
    with pytest.raises(Refusal) as refused:
        hub.admit(upgrade(origin))
    assert refused.value.status == "403 Forbidden" and repr(origin) in refused.value.reason
    assert hub.counters["refused_origin"] == 1


def test_the_services_own_pages_may_open_websockets_but_only_on_its_own_host_and_port():
    hub = Hub(replace(FRONT_ENDS, allowed_hosts=("logs.example.com",)))
    hub.admit(upgrade("http://logs.example.com:6006"))
    for foreign in ("http://logs.example.com:6006.evil.com", "http://logs.example.com:6007",
                    "http://logs.example.com"):
        with pytest.raises(Refusal):
            hub.admit(upgrade(foreign))
    with pytest.raises(Refusal):  # no Host header: nothing to compare with
        hub.admit(upgrade("http://logs.example.com:6006", host=""))


def test_while_shutting_down_or_full_upgrades_are_refused_with_503():
    hub = Hub(Settings(max_clients=2))
    hub.attach(FakeClient())
    hub.admit(upgrade(None))  # one place left
    hub.attach(FakeClient())
    with pytest.raises(Refusal) as full:
        hub.admit(upgrade(None))
    assert full.value.status == "503 Service Unavailable" and hub.counters["refused_full"] == 1
    closing = Hub(Settings())
    closing.close_all(timeout=0)
    with pytest.raises(Refusal) as draining:
        closing.admit(upgrade(None))
    assert draining.value.status == "503 Service Unavailable" and "shutting down" in draining.value.reason


def test_a_bad_query_is_refused_with_400_and_counted():
    hub = Hub(Settings(replay_records=100))
    with pytest.raises(Refusal) as refused:
        hub.admit({"QUERY_STRING": "tail=101"})
    assert refused.value.status == "400 Bad Request" and "from 0 to 100" in refused.value.reason
    assert hub.counters["refused_bad_request"] == 1
    assert hub.admit({"QUERY_STRING": "tail=100&level=warn&since=logs:0:5"}) == Subscription(Filter.from_query({"level": ["warn"]}), 100,
                                                          {("logs", 0): 5})


def test_a_client_that_hangs_up_during_the_greeting_is_not_registered():
    hub = Hub(Settings())
    gone = FakeClient()
    gone.closed = True
    hub.attach(gone)
    assert len(hub) == 0 and not hasattr(gone, "on_text")


def test_with_replay_off_tail_is_refused_and_a_resume_is_told_everything_missed_is_a_gap():
    hub = Hub(Settings(replay_records=0))  # REPLAY_RECORDS=0
    with pytest.raises(Refusal) as refused:
        hub.admit({"QUERY_STRING": "tail=1"})
    assert refused.value.status == "400 Bad Request" and "from 0 to 0" in refused.value.reason
    hub.broadcast([rec(i) for i in range(5)])
    client = FakeClient()
    hub.attach(client, Subscription(since={("logs", 0): 1}))
    hello, gap = client.messages()
    assert hello["positions"] == ["logs:0:4"]
    assert gap == {"type": "gap", "partitions": [{"topic": "logs", "partition": 0, "from": 2, "to": 4, "reason": "not_in_replay"}]}
    hub.broadcast([rec(5)])
    assert client.offsets() == [5], "then live, nothing replayed"


@pytest.mark.parametrize("message, reason", [
    ({"service": 7}, "service must be a string or a list of strings"),
    ({"service": ["a", 7]}, "service must be a string or a list of strings"),
    ({"attributes": ["a"]}, "attributes must be an object of path: value"),
    ({"level": 5}, "level must be a string"),
    ({"q": ["x"]}, "q must be a string"),
    ({"regex": 1}, "regex must be a string"),
    ({"level": "loud"}, "unknown level 'loud': use one of trace, debug, info, warn, error, fatal"),
    ({"service": [f"s{i}" for i in range(21)]}, "at most 20 services"),
    ({"service": "x" * 201}, "a service name is longer than 200 characters"),
    ({"q": "x" * 201}, "q is longer than 200 characters"),
    ({"regex": "x" * 201}, "regex is longer than 200 characters"),
    ({"attributes": {f"a{i}": 1 for i in range(11)}}, "at most 10 attribute conditions"),
    ({"attributes": {"a": None}}, "bad attribute condition 'a': use attr.<path>=<value>"),
    ({"attributes": {"a": {"b": 1}}}, "bad attribute condition 'a'"),
    ({"attributes": {"a": [1]}}, "bad attribute condition 'a'"),
    ({"attributes": {"": "1"}}, "bad attribute condition ''"),
    ({"attributes": {"p" * 201: "1"}}, "bad attribute condition"),
    ({"attributes": {"a": "v" * 201}}, "bad attribute condition 'a'"),
])
def test_a_bad_subscribe_says_exactly_what_is_wrong(message, reason):
    with pytest.raises(FilterError) as caught:
        Filter.from_message({"type": "subscribe", **message})
    assert str(caught.value).startswith(reason)


def test_every_limit_is_inclusive():
    most = Filter.from_message({"type": "subscribe", "level": "WARN", "service": [f"s{i}" for i in range(20)],
                                "q": "Q" * 200, "regex": "r" * 200,
                                "attributes": {f"a{i}": "v" * 200 for i in range(10)}})
    assert most.min_severity == 13 and len(most.services) == 20 and most.text == "q" * 200
    assert most.pattern == "r" * 200 and len(most.attributes) == 10
    assert Filter.from_message({"type": "subscribe", "service": "x" * 200}).services == {"x" * 200}
    assert Filter.from_message({"type": "subscribe", "attributes": {"p" * 200: 1}}).attributes == (("p" * 200, "1"),)


def test_a_subscribe_without_conditions_is_everything_and_blank_services_are_ignored():
    assert Filter.from_message({"type": "subscribe"}) == EVERYTHING
    assert Filter.from_message({"type": "subscribe", "level": None, "q": "", "regex": None}).everything
    assert Filter.from_message({"type": "subscribe", "service": [" api ", " ", ""]}).services == {"api"}
    assert Filter.from_message({"type": "subscribe", "service": "api"}).describe() == {"service": ["api"]}


@pytest.mark.parametrize("attributes, path, wanted, matched", [
    ({"user": {"id": 7}}, "user.id", "7", True),
    ({"user.id": 7}, "user.id", "7", True),  # a flat key with dots
    ({"user": {"id": 7}}, "user.id", "8", False),
    ({"user": {"name": "x"}}, "user.id", "7", False),
    ({"user": 7}, "user.id", "7", False),  # not an object on the way
    ({"ok": True}, "ok", True, True),
    ({"ok": True}, "ok", "true", True),  # booleans compare as JSON text
    ({"ok": False}, "ok", "false", True),
    ({"ok": False}, "ok", "False", False),
    ({"code": 500}, "code", 500, True),
    ({"code": "500"}, "code", 500, True),
    ({"tags": ["a"]}, "tags", "['a']", False),  # lists and objects never match
    ({"meta": {}}, "meta", "{}", False),
    ({"gone": None}, "gone", "None", False),
])
def test_attribute_conditions_compare_scalars_as_text_along_dotted_paths(attributes, path, wanted, matched):
    wanted_filter = Filter.from_message({"type": "subscribe", "attributes": {path: wanted}})
    assert wanted_filter.matches(rec(1, **attributes)) is matched


def test_query_filters_take_the_last_value_and_split_services_on_commas():
    f = Filter.from_query({"level": ["debug", "error"], "q": ["a", "B"], "service": ["x, y", "z"],
                           "attr.code": ["1", "2"]})
    assert f.describe() == {"level": "error", "service": ["x", "y", "z"], "q": "b", "attributes": {"code": "2"}}
    assert Filter.from_query({}) == EVERYTHING and Filter.from_query({"level": []}) == EVERYTHING


@pytest.mark.parametrize("level, severities_passing", [
    ("trace", [1, 5, 9, 13, 17, 21]), ("debug", [5, 9, 13, 17, 21]), ("info", [9, 13, 17, 21]),
    ("warn", [13, 17, 21]), ("error", [17, 21]), ("fatal", [21]),
])
def test_a_minimum_level_passes_that_level_and_above(level, severities_passing):
    f = Filter.from_query({"level": [level]})
    names = {1: "trace", 5: "debug", 9: "info", 13: "warn", 17: "error", 21: "fatal"}
    assert [n for n, name in names.items() if f.matches(rec(1, name))] == severities_passing
    assert f.describe() == {"level": level}


def test_the_ring_holds_exactly_what_fits_its_byte_bound():
    size = rec(0).size + 200  # RECORD_OVERHEAD
    ring = ReplayRing(max_records=100, max_bytes=3 * size)
    ring.add([rec(i) for i in range(3)])
    assert len(ring) == 3, "exactly at the bound: all kept"
    ring.add([rec(3)])
    assert [r.offset for r in ring.tail(EVERYTHING, 10)] == [1, 2, 3]


def test_resume_per_partition_with_a_filter():
    ring = ReplayRing(max_records=100, max_bytes=1 << 20)
    ring.add([rec(10, "error", partition=1), rec(11, "info", partition=1), rec(12, "error", partition=1),
              rec(3, "error", partition=0)])
    errors = Filter.from_query({"level": ["error"]})
    # Partition 0: nothing newer than 3. Partition 1 started at 10: 6..9 were never here.
    # Partition 7: never published. None of them stops the others from being reported.
    missed, gaps = ring.since(errors, {("logs", 0): 3, ("logs", 1): 5, ("logs", 7): 0})
    assert [(r.partition, r.offset) for r in missed] == [(1, 10), (1, 12)], "only matching records, only after"
    assert [g.as_dict() for g in gaps] == [{"topic": "logs", "partition": 1, "from": 6, "to": 9, "reason": "not_in_replay"}]


def test_a_partition_marked_but_not_yet_published_has_nothing_newer():
    ring = ReplayRing(max_records=100, max_bytes=1 << 20)
    ring.mark_start("logs", 0, 50)
    assert ring.positions() == ["logs:0:49"], "the last offset before the start"
    assert ring.since(EVERYTHING, {("logs", 0): 49}) == ([], [])


@pytest.mark.parametrize("text, parsed", [
    ("logs:0:-1", {("logs", 0): -1}),  # nothing seen yet on that partition
    ("logs:0:0,,logs:3:7,", {("logs", 0): 0, ("logs", 3): 7}),
    ("a.b-c_d:12:345", {("a.b-c_d", 12): 345}),
])
def test_positions_at_their_bounds(text, parsed):
    assert parse_positions(text) == parsed


@pytest.mark.parametrize("text", ["logs:0:-2", "logs:-1:5", "logs:-1:-2", ":0:1"])
def test_positions_out_of_bounds_are_refused_naming_the_item(text):
    with pytest.raises(ValueError) as caught:
        parse_positions(text)
    assert str(caught.value) == text


def test_at_most_ten_thousand_positions():
    assert len(parse_positions(",".join(f"logs:{p}:0" for p in range(10_000)))) == 10_000
    with pytest.raises(ValueError, match="^too many positions$"):
        parse_positions(",".join(f"logs:{p}:0" for p in range(10_001)))


class SteppingStop:
    """The keepalive's stop event: each wait moves the hub's fake clock instead of sleeping."""

    def __init__(self, clock: list[float], steps: int) -> None:
        self.clock, self.steps = clock, steps

    def wait(self, timeout: float) -> bool:
        if self.steps == 0:
            return True
        self.steps -= 1
        self.clock[0] += timeout
        return False


def test_keepalive_pings_each_interval_checks_stalls_between_and_closes_the_silent(monkeypatch):
    import logger.hub as hub_module
    clock = [1_000.0]
    monkeypatch.setattr(hub_module, "time", SimpleNamespace(monotonic=lambda: clock[0], time=lambda: clock[0]))
    hub = Hub(Settings(ping_interval_s=25))
    fresh, silent = FakeClient(), FakeClient()
    fresh.last_seen, silent.last_seen = 1_000.0, 1_000.0 - 51
    hub.attach(fresh)
    hub.attach(silent)
    hub.keepalive(SteppingStop(clock, 26))  # 26 one-second steps
    assert silent.closed_with == (1011, "keepalive ping timeout") and hub.counters["closed_unresponsive"] == 1
    pings = [f for f in fresh.frames if f[0] == 0x89]
    assert pings == [b"\x89\x00"], "one ping, at 25 s"
    assert fresh.stall_checks == 25, "every other second: a stall check"
    assert fresh.closed_with is None


def test_close_all_says_going_away_to_everyone_and_drops_those_that_stay():
    hub = Hub(Settings())
    clients = [FakeClient(), FakeClient()]
    for client in clients:
        hub.attach(client)
    hub.close_all(timeout=0)
    assert not hub.accepting
    assert [c.closed_with for c in clients] == [(1001, "server shutting down")] * 2
    assert all(c.aborted for c in clients), "no answer within the timeout: cut"


def test_publish_counts_what_each_group_got():
    hub = Hub(Settings())
    everyone = [FakeClient(), FakeClient()]
    errors = FakeClient()
    for client in everyone:
        hub.attach(client)
    hub.attach(errors, Subscription(Filter.from_query({"level": ["error"]})))
    hub.broadcast([rec(0, "info"), rec(1, "error"), rec(2, "info")])
    assert hub.counters["records_delivered"] == 3 * 2 + 1 and hub.counters["batches"] == 1
    assert hub.counters["bytes_sent"] == 2 * len(everyone[0].frames[-1]) + len(errors.frames[-1])
    hub.broadcast([rec(3, "info")])  # nothing for the errors group: no frame at all
    assert errors.offsets() == [1] and len(errors.frames) == 2  # hello + one batch
    hub.broadcast([])
    assert hub.counters["batches"] == 2


@pytest.mark.parametrize("text", ["[1]", '"pause"', '{"type": 5}', "{}"])
def test_messages_that_are_not_objects_with_a_type_get_an_error(text):
    hub = Hub(Settings())
    client = FakeClient()
    hub.attach(client)
    client.on_text(client, text)
    assert client.messages()[-1] == {"type": "error", "error": "messages must be JSON objects with a type"}


def test_pause_and_resume_reach_the_client():
    hub = Hub(Settings())
    client = FakeClient()
    hub.attach(client)
    client.on_text(client, '{"type":"pause"}')
    assert client.paused is True
    client.on_text(client, '{"type":"resume"}')
    assert client.paused is False and client.messages()[-1] == {"type": "resumed"}


def test_the_hello_message_and_which_frames_may_be_dropped():
    import os

    import logger
    hub = Hub(Settings(kafka_topic="orders", ping_interval_s=7, replay_records=3))
    hub.broadcast([rec(i) for i in range(5)])
    client = FakeClient()
    hub.attach(client, Subscription(Filter.from_query({"level": ["info"]}), since={("logs", 0): 0}))
    hello = client.messages()[0]
    assert hello == {"type": "hello", "server": "logger-service", "version": logger.__version__, "topic": "orders",
                     "worker": os.getpid(), "ping_interval_s": 7, "positions": ["logs:0:4"],
                     "filter": {"level": "info"}}
    assert [m["type"] for m in client.messages()] == ["hello", "gap", "logs"]
    assert client.initial == b"" and client.on_close is not None
    client.on_text(client, '{"type":"ping"}')
    hub.broadcast([rec(5)])
    # The greeting, the gap and answers are never dropped; live batches may be. (The replay
    # is handed over as a whole, see FakeClient.replay, and is never dropped either.)
    assert client.droppable == [False, False, False, True]
    assert hub.counters["connections"] == 1
    hub.attach(FakeClient())
    assert hub.counters["connections"] == 2


def test_each_refusal_is_counted_every_time_with_its_reason():
    hub = Hub(Settings(max_clients=1, cors_origins=("http://box",)))
    hub.admit({"HTTP_ORIGIN": "HTTP://BOX/"})  # a configured origin, in capitals with a slash
    for _ in range(2):
        with pytest.raises(Refusal):
            hub.admit({"HTTP_ORIGIN": "http://xxxx"})  # no Host header: not our own page either
        with pytest.raises(Refusal) as bad:
            hub.admit({"QUERY_STRING": "since=x"})
    assert bad.value.reason == "since must be topic:partition:offset[,...]"
    assert (hub.counters["refused_origin"], hub.counters["refused_bad_request"]) == (2, 2)
    hub.attach(FakeClient())
    for _ in range(2):
        with pytest.raises(Refusal) as full:
            hub.admit({})
    assert full.value.reason == "this worker already has 1 clients" and hub.counters["refused_full"] == 2
    hub.close_all(timeout=0)
    with pytest.raises(Refusal) as closing:
        hub.admit({})
    assert closing.value.reason == "server is shutting down" and hub.accepting is False
    with pytest.raises(Refusal) as level:
        Hub(Settings()).admit({"QUERY_STRING": "level=loud"})
    assert level.value.reason.startswith("unknown level 'loud'") and str(level.value) == level.value.reason


def test_a_query_without_values_asks_for_nothing_special():
    assert Subscription.from_query_string("", 10) == Subscription(EVERYTHING, 0, None)
    assert Subscription.from_query_string("tail=&level=&since=", 10) == Subscription(EVERYTHING, 0, None)


def test_keepalive_pings_at_the_interval_exactly_and_closes_after_two_silent_intervals(monkeypatch):
    import logger.hub as hub_module
    clock = [1_000.0]
    monkeypatch.setattr(hub_module, "time", SimpleNamespace(monotonic=lambda: clock[0], time=lambda: clock[0]))
    hub = Hub(Settings(ping_interval_s=10))
    client, quiet = FakeClient(), FakeClient()
    client.last_seen = quiet.last_seen = 1_000.0
    hub.attach(client)
    hub.attach(quiet)
    hub.keepalive(SteppingStop(clock, 10))  # up to 10 s: the first ping, exactly then
    assert client.frames[-1] == b"\x89\x00" and client.droppable[-1] is False
    client.last_seen = clock[0]  # it answered; the quiet one did not
    hub.keepalive(SteppingStop(clock, 11))  # 21 s after it was last heard from: > 2 intervals
    assert quiet.closed_with == (1011, "keepalive ping timeout") and client.closed_with is None


SELLER_SCOPE = Filter(services=frozenset({"orders", "payments"}), attributes=(("seller.id", "s-42"),))


@pytest.mark.parametrize("asked, effective", [
    ({}, {"service": ["orders", "payments"], "attributes": {"seller.id": "s-42"}}),
    ({"service": ["orders", "billing"], "level": ["warn"], "q": ["Timeout"]},
     {"service": ["orders"], "level": "warn", "q": "timeout", "attributes": {"seller.id": "s-42"}}),
    ({"attr.seller.id": ["s-42"], "attr.region": ["eu"], "regex": ["x+"]},
     {"service": ["orders", "payments"], "regex": "x+", "attributes": {"region": "eu", "seller.id": "s-42"}}),
])
def test_a_scope_narrows_what_the_client_asks_for(asked, effective):
    assert Filter.from_query(asked).narrowed_by(SELLER_SCOPE).describe() == effective


def test_narrowing_is_an_and_of_both_filters():
    scope = Filter(min_severity=13, services=frozenset({"orders"}), attributes=(("seller.id", "7"),))
    asked = Filter.from_query({"level": ["info"], "q": ["paid"]})
    effective = asked.narrowed_by(scope)
    records = [rec(0, "warn", "orders", "paid", seller={"id": 7}), rec(1, "info", "orders", "paid", seller={"id": 7}),
               rec(2, "error", "billing", "paid", seller={"id": 7}), rec(3, "warn", "orders", "paid", seller={"id": 8}),
               rec(4, "warn", "orders", "unpaid", seller={"id": 7}), rec(5, "warn", "orders", "shipped",
                                                                         seller={"id": 7})]
    assert [r.offset for r in records if effective.matches(r)] == \
        [r.offset for r in records if asked.matches(r) and scope.matches(r)] == [0, 4]


def test_narrowing_by_everything_or_itself_is_the_same_filter_and_groups_stay_shared():
    asked = Filter.from_query({"level": ["warn"]})
    assert asked.narrowed_by(EVERYTHING) is asked
    assert SELLER_SCOPE.narrowed_by(SELLER_SCOPE) is SELLER_SCOPE
    assert EVERYTHING.narrowed_by(SELLER_SCOPE) == SELLER_SCOPE
    # Two clients of one scope asking the same thing end in one group (one encoding per batch).
    assert hash(asked.narrowed_by(SELLER_SCOPE)) == hash(Filter.from_query({"level": ["warn"]}).narrowed_by(
        Filter(services=frozenset({"payments", "orders"}), attributes=(("seller.id", "s-42"),))))


@pytest.mark.parametrize("asked, reason", [
    ({"service": ["billing"]}, "none of the services asked for is in this token's scope"),
    ({"attr.seller.id": ["s-1"]}, "attribute seller.id is bound to 's-42'"),
])
def test_asking_for_what_the_scope_excludes_is_an_error_not_a_wider_view(asked, reason):
    with pytest.raises(FilterError, match=reason):
        Filter.from_query(asked).narrowed_by(SELLER_SCOPE)


@pytest.mark.parametrize("narrower, wider, within", [
    (SELLER_SCOPE, SELLER_SCOPE, True),
    (SELLER_SCOPE, EVERYTHING, True),
    (EVERYTHING, SELLER_SCOPE, False),
    (Filter(services=frozenset({"orders"}), attributes=(("seller.id", "s-42"),)), SELLER_SCOPE, True),
    (Filter(services=frozenset({"orders", "billing"}), attributes=(("seller.id", "s-42"),)), SELLER_SCOPE, False),
    (Filter(services=frozenset({"orders"})), SELLER_SCOPE, False),  # lost the seller condition
    (Filter(services=frozenset({"orders"}), attributes=(("seller.id", "s-1"),)), SELLER_SCOPE, False),
    (Filter(min_severity=17, services=frozenset({"orders"})), Filter(min_severity=13), True),
    (Filter(min_severity=9), Filter(min_severity=13), False),
])
def test_within_tells_whether_a_scope_is_no_wider(narrower, wider, within):
    assert narrower.within(wider) is within
