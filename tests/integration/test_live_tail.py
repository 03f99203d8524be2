"""The live tail protocol against the real service: filters, replay, resume, pause, the schema."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import websocket

from tests.conftest import LiveClient, produce

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "ws-protocol.schema.json").read_text())
CLIENT_SCHEMA = {**{k: v for k, v in SCHEMA.items() if k != "oneOf"}, "$ref": "#/$defs/client_message"}
LEVELS = ["info", "error", "debug", "warn"]


def values(run_id: str, start: int, count: int) -> list[bytes]:
    return [json.dumps({"run": run_id, "seq": i, "level": LEVELS[i % 4], "service": f"svc-{i % 3}",
                        "message": f"event {i}", "user": {"id": i % 5}}).encode() for i in range(start, start + count)]


def seqs(records) -> list[int]:
    return [r["attributes"]["seq"] for r in records]


def assert_valid(*clients: LiveClient) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for client in clients:
        for message in client.messages:
            validator.validate(message)


def wait_message(client: LiveClient, kind: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in list(client.messages):
            if message["type"] == kind:
                return message
        time.sleep(0.02)
    raise TimeoutError(f"no {kind!r} message; got {[m['type'] for m in client.messages]}")


def send(client: LiveClient, message: dict) -> None:
    jsonschema.validate(message, CLIENT_SCHEMA)
    client.ws.send(json.dumps(message))


@pytest.fixture
def live(kafka, topic, service, ws_client, run_id):
    """A service on a fresh topic, a way to connect with a query string, and a producer."""
    name = topic(2)
    proc = service(name)

    class Live:
        def connect(self, query: str = "") -> LiveClient:
            return ws_client(proc.ws_url + ("?" + query if query else ""))

        def produce(self, start: int, count: int) -> None:
            produce(kafka, name, values(run_id, start, count), partition_of=lambda i: 0)
    Live.proc, Live.topic = proc, name
    return Live()


def test_clients_with_different_filters_get_exactly_their_records(live):
    errors = live.connect("level=error")
    svc1_users = live.connect("service=svc-1&attr.user.id=1&q=EVENT")
    regex = live.connect("regex=event%20(1|2)$")
    everything = live.connect()
    live.produce(0, 40)
    everything.wait_records(40)
    expected_errors = [i for i in range(40) if LEVELS[i % 4] in ("error",)]
    assert seqs(errors.wait_records(len(expected_errors))) == expected_errors
    expected = [i for i in range(40) if i % 3 == 1 and i % 5 == 1]
    assert seqs(svc1_users.wait_records(len(expected))) == expected
    assert seqs(regex.wait_records(2)) == [1, 2]
    # Every batch has reached the unfiltered client, so the filtered ones have had theirs too.
    assert len(errors.records()) == len(expected_errors) and len(regex.records()) == 2
    assert_valid(errors, svc1_users, regex, everything)


def test_a_filter_change_takes_effect_at_a_batch_boundary(live, kafka, run_id):
    client = live.connect()
    producing = threading.Event()

    def produce_in_bursts() -> None:
        producer = kafka.producer(linger_ms=20)
        for start in range(0, 600, 20):
            for value in values(run_id, start, 20):
                producer.send(live.topic, value, partition=0)
            producer.flush()
            producing.set()
            time.sleep(0.02)
        producer.close()
    thread = threading.Thread(target=produce_in_bursts)
    thread.start()
    producing.wait(10)
    client.wait_records(20)
    send(client, {"type": "subscribe", "level": "error"})
    thread.join(60)
    assert wait_message(client, "subscribed")["filter"] == {"level": "error"}
    client.wait_records(1, where=lambda r: r["attributes"]["seq"] >= 580 and r["level"] == "error")
    kinds = [m["type"] for m in client.messages]
    switch = kinds.index("subscribed")
    before = [m for m in client.messages[:switch] if m["type"] == "logs"]
    after = [m for m in client.messages[switch:] if m["type"] == "logs"]
    assert before and after
    assert all(len({r["level"] for r in m["records"]}) > 1 or len(m["records"]) == 1 for m in before)
    assert all(r["level"] == "error" for m in after for r in m["records"]), "no batch after the switch is mixed"
    got = seqs(client.records())
    assert got == sorted(got) and len(got) == len(set(got))
    assert_valid(client)


def test_tail_replays_the_last_matching_records_then_goes_live(live):
    reference = live.connect()
    live.produce(0, 30)
    reference.wait_records(30)
    late = live.connect("tail=5&level=error")
    replay = wait_message(late, "logs")
    assert replay["replay"] is True
    errors = [i for i in range(30) if LEVELS[i % 4] == "error"]
    assert seqs(replay["records"]) == errors[-5:]
    live.produce(30, 12)
    late.wait_records(5 + 3)
    assert seqs(late.records()) == errors[-5:] + [i for i in range(30, 42) if LEVELS[i % 4] == "error"]
    assert_valid(late, reference)


def test_reconnecting_with_the_last_position_resumes_exactly(live):
    reference = live.connect()  # stays: once it has a record, so has the replay ring
    first = live.connect()
    live.produce(0, 10)
    records = first.wait_records(10)
    hello = first.messages[0]
    positions = {p.rsplit(":", 1)[0]: p for p in hello["positions"]}
    for r in records:  # what a client tracks: the last offset seen per partition
        positions[f"{r['topic']}:{r['partition']}"] = f"{r['topic']}:{r['partition']}:{r['offset']}"
    first.close()
    live.produce(10, 15)  # missed while away
    reference.wait_records(25)
    second = live.connect("since=" + ",".join(positions.values()))
    live.produce(25, 5)
    assert seqs(second.wait_records(20)) == list(range(10, 30)), "the missed ones, then live, once each"
    assert second.messages[1]["type"] == "logs" and second.messages[1].get("replay") is True
    assert not any(m["type"] == "gap" for m in second.messages)
    assert_valid(first, second)


def test_a_position_older_than_the_ring_yields_a_gap(kafka, topic, service, ws_client, run_id):
    name = topic(1)
    proc = service(name, REPLAY_RECORDS="5")
    reference = ws_client(proc.ws_url)
    produce(kafka, name, values(run_id, 0, 20))
    reference.wait_records(20)
    client = ws_client(proc.ws_url + f"?since={name}:0:2")
    gap = wait_message(client, "gap")
    assert gap["partitions"] == [{"topic": name, "partition": 0, "from": 3, "to": 14, "reason": "not_in_replay"}]
    replay = wait_message(client, "logs")
    assert [r["offset"] for r in replay["records"]] == [15, 16, 17, 18, 19]
    assert_valid(client)


def test_pause_holds_records_and_resume_delivers_them(live):
    reference = live.connect()
    client = live.connect()
    wait_message(client, "hello")
    send(client, {"type": "pause"})
    wait_message(client, "paused")
    live.produce(0, 20)
    reference.wait_records(20)  # every batch went out: the paused client was offered each of them
    assert client.records() == [], "nothing while paused"
    send(client, {"type": "resume"})
    assert seqs(client.wait_records(20)) == list(range(20))
    assert_valid(client)


@pytest.mark.parametrize("query, reason", [
    ("level=loud", "unknown level"),
    ("regex=%28unclosed", "invalid regex"),
    ("q=" + "x" * 300, "longer than"),
    ("tail=many", "tail must be"),
    ("since=nonsense", "since must be"),
])
def test_bad_filters_are_refused_with_400_and_the_reason(live, query, reason):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(live.proc.ws_url + "?" + query, timeout=5, suppress_origin=True)
    assert refused.value.status_code == 400
    assert reason in refused.value.resp_body.decode()


def test_a_bad_subscribe_is_answered_with_an_error_and_the_old_filter_stays(live):
    client = live.connect("level=error")
    client.ws.send(json.dumps({"type": "subscribe", "regex": "(unclosed"}))
    assert "invalid regex" in wait_message(client, "error")["error"]
    live.produce(0, 8)
    assert seqs(client.wait_records(2)) == [1, 5]
    assert_valid(client)


TOKEN = "test-ingest-token-0123456789"


def test_records_posted_over_http_reach_every_client_through_kafka(kafka, topic, service, ws_client, receiver,
                                                                    run_id):
    import requests
    name = topic(1)
    proc = service(name, INGEST_TOKEN=TOKEN)
    client = ws_client(proc.ws_url)
    url = proc.url + "/api/logs"
    assert requests.post(url, json={"message": "x"}, timeout=5).status_code == 401
    assert requests.post(url, json={"message": "x"}, headers={"Authorization": "Bearer wrong"},
                         timeout=5).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.post(url, data="not json", headers=auth, timeout=5).status_code == 400
    one = requests.post(url, json={"message": "posted one", "run": run_id}, headers=auth, timeout=10)
    assert one.status_code == 202 and one.json() == {"accepted": 1}
    many = requests.post(url, json=[{"message": "posted two", "run": run_id, "level": "error"}, "plain text"],
                         headers=auth, timeout=10)
    assert many.status_code == 202 and many.json() == {"accepted": 2}
    records = client.wait_records(3)
    assert [r["message"] for r in records] == ["posted one", "posted two", "plain text"]
    assert records[1]["level"] == "error" and records[0]["topic"] == name
    receiver.wait_for_matching(lambda r: r["attributes"].get("run") == run_id, 2)
    assert TOKEN not in proc.log_text()
    assert_valid(client)


def test_a_jwt_writer_posts_through_kafka_and_its_records_say_who_sent_them(kafka, topic, service, receiver,
                                                                           run_id):
    """Issue 14: with auth on and no INGEST_TOKEN the route exists for JWT writers; a reader's
    token gets 403, a bad one 401; a writer's records reach the collector stamped ``enduser.id``."""
    import requests
    from tests.auth_keys import SECRET, hs256
    proc = service(topic(1), AUTH_JWT_SECRET=SECRET, AUTH_ATTRIBUTE_CLAIMS="seller.id=seller_id",
                   ACCESS_LOG="true")
    url = proc.url + "/api/logs"

    def post(token: str | None, body) -> requests.Response:
        return requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"} if token else {},
                             timeout=10)
    writer = hs256(sub="checkout-service", **{"logs.write": True})
    reader = hs256(sub="seller-user", seller_id="s-1")
    forged = hs256(secret="not-the-service-secret-but-32-characters", sub="x", **{"logs.write": True})
    body = [{"message": "paid", "run": run_id, "seq": 0}, {"message": "spoofed", "run": run_id, "seq": 1,
                                                            "enduser.id": "someone-else"}]
    refused = {"none": post(None, body), "reader": post(reader, body), "forged": post(forged, body)}
    assert {name: r.status_code for name, r in refused.items()} == {"none": 401, "reader": 403, "forged": 401}
    assert 'error="insufficient_scope"' in refused["reader"].headers["WWW-Authenticate"]
    ok = post(writer, body)
    assert ok.status_code == 202 and ok.json() == {"accepted": 2}
    exported = receiver.wait_for_matching(lambda r: r["attributes"].get("run") == run_id, 2)
    assert sorted((r["attributes"]["seq"], r["attributes"]["enduser.id"]) for r in exported) == \
        [(0, "checkout-service"), (1, "checkout-service")]
    proc.wait_until(lambda: proc.log_text().count('"path":"/api/logs"') >= 4, 10, "the access lines")
    for token in (writer, reader, forged):
        assert token not in proc.log_text()


def test_without_a_token_the_ingest_route_is_not_mounted(live):
    import requests
    assert requests.post(live.proc.url + "/api/logs", json={"message": "x"}, timeout=5).status_code == 404
