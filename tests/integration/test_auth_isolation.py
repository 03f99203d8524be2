"""Isolation soak (issue 14): twenty sellers' records, interleaved, to 200 seller clients and a few admins.

Records of 20 sellers, numbered per seller, are produced interleaved at a few
thousand per second over three partitions. 200 clients hold 20 different
seller tokens (HS256; ``AUTH_ATTRIBUTE_CLAIMS=seller.id=seller_id``) and four
hold an admin token (``logs.all``). Among the seller clients, some ask to see
everything with ``subscribe`` and some ask for another seller's records (the
scope is ANDed with what they ask: they must still get exactly their own),
some join late with ``?tail=`` (the replay is scoped too), and some hang up
half-way and come back with ``?since=`` while records flow (so is the
resume). At the end every seller client holds exactly its seller's records,
each number once, none missing, none foreign; every admin holds all of them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import jwt
import pytest
import requests

from devstack.waiting import wait_until
from tests.wsload import ClientPool, RawClient, handshake

SECRET = "isolation-soak-shared-secret-0123456789"
SELLERS = 20
PER_SELLER = 500  # numbered 0..499 per seller: 10,000 records in all
TOTAL = SELLERS * PER_SELLER
RATE = 3_000  # records per second, bounded
PARTITIONS = 3
LIVE_PER_SELLER = 6  # plain clients per seller; with the four kinds below, 10 per seller
RING = 20_000  # REPLAY_RECORDS: the whole run fits, so ?tail= and ?since= owe every record


def seller_id(k: int) -> str:
    return f"seller-{k:02d}"


def token(claims: dict[str, Any]) -> str:
    return jwt.encode({**claims, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def bearer(claims: dict[str, Any]) -> list[str]:
    return [f"Authorization: Bearer {token(claims)}"]


def seller_claims(k: int) -> dict[str, Any]:
    return {"sub": f"user-of-{seller_id(k)}", "seller_id": seller_id(k)}


ADMIN = {"sub": "admin", "logs.all": True}


def value(seq: int) -> bytes:
    k, n = seq % SELLERS, seq // SELLERS
    return json.dumps({"seller": {"id": seller_id(k)}, "n": n, "seq": seq, "level": "info",
                       "service": "shop", "message": f"order event {n} of {seller_id(k)}"}).encode()


def produce(kafka, topic: str, first: int, last: int, sent: list[int]) -> None:
    """Records ``first``..``last - 1`` at ``RATE``, round-robin over the partitions; ``sent``
    counts what was handed to the producer (for the main thread to time its moves)."""
    producer = kafka.producer(linger_ms=5)
    try:
        started = time.monotonic()
        for seq in range(first, last):
            producer.send(topic, value(seq), partition=seq % PARTITIONS)
            sent[0] = seq + 1
            ahead = (seq - first) / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(timeout=30)
    finally:
        producer.close()


def records(client: RawClient) -> list[dict[str, Any]]:
    return [r for m in list(client.messages) if m.get("type") == "logs" for r in m["records"]]


def resume_positions(client: RawClient) -> str:
    """Where a client stands: its hello's positions, moved on by every record it received."""
    hello = next(m for m in client.messages if m.get("type") == "hello")
    seen = {}
    for position in hello["positions"]:
        topic, partition, offset = position.rsplit(":", 2)
        seen[(topic, int(partition))] = int(offset)
    for record in records(client):
        key = (record["topic"], record["partition"])
        seen[key] = max(seen.get(key, -1), record["offset"])
    return ",".join(f"{topic}:{partition}:{offset}" for (topic, partition), offset in sorted(seen.items()))


@pytest.mark.timeout(180)
def test_every_seller_client_gets_exactly_its_sellers_records_through_replay_resume_and_subscribe(
        kafka, topic, service):
    name = topic(PARTITIONS)
    # No shedding (a skipped range would be "missing" records) and no forward path (not under test).
    proc = service(name, AUTH_JWT_SECRET=SECRET, AUTH_ATTRIBUTE_CLAIMS="seller.id=seller_id",
                   REPLAY_RECORDS=str(RING), REPLAY_BYTES=str(64 << 20), TAIL_MAX_LAG_S="0",
                   FORWARD_ENABLED="false")
    host, port = "127.0.0.1", proc.port
    sellers = range(SELLERS)
    pools: list[ClientPool] = []

    def pool(upgrades) -> ClientPool:
        made = ClientPool(host, port, upgrades=upgrades)
        pools.append(made)
        return made

    try:
        # A client may not widen its scope by asking at connect either: refused before the 101.
        sock, status, _ = handshake(host, port, path=f"/ws?attr.seller.id={seller_id(1)}",
                                    headers=bearer(seller_claims(0)))
        sock.close()
        assert status in (400, 403), f"asking for another seller's records at connect was answered {status}"

        live = pool([("/ws", bearer(seller_claims(k))) for k in sellers for _ in range(LIVE_PER_SELLER)])
        widen_all = pool([("/ws", bearer(seller_claims(k))) for k in sellers])
        widen_other = pool([("/ws", bearer(seller_claims(k))) for k in sellers])
        resumed_before = pool([("/ws", bearer(seller_claims(k))) for k in sellers])
        admins = pool([("/ws", bearer(ADMIN))] * 3)
        for pool_ in (live, widen_all, widen_other, resumed_before, admins):
            pool_.wait(lambda p=pool_: all(any(m.get("type") == "hello" for m in c.messages) for c in p.clients),
                       10, "every hello")
        for k, client in enumerate(widen_all.clients):
            assert client.messages[0]["filter"] == {"attributes": {"seller.id": seller_id(k)}}, "hello: the scope"
            widen_all.send(client, {"type": "subscribe"})  # "everything", please
        for k, client in enumerate(widen_other.clients):
            widen_other.send(client, {"type": "subscribe", "attributes": {"seller.id": seller_id((k + 1) % SELLERS)}})

        def answered(p: ClientPool, kind: str) -> bool:
            return all(any(m.get("type") == kind for m in c.messages) for c in p.clients)
        widen_all.wait(lambda: answered(widen_all, "subscribed"), 10, "every subscribed")
        for k, client in enumerate(widen_all.clients):
            subscribed = next(m for m in client.messages if m.get("type") == "subscribed")
            assert subscribed["filter"] == {"attributes": {"seller.id": seller_id(k)}}, "the scope stays"
        widen_other.wait(lambda: answered(widen_other, "error"), 10, "every refusal of another seller")

        # Phase 1: the first half, to everyone connected so far.
        half = TOTAL // 2
        produce(kafka, name, 0, half, [0])
        wait_until(lambda: all(len(records(c)) >= half // SELLERS for c in resumed_before.clients),
                   60, "the resuming clients to have the first half")
        positions = [resume_positions(c) for c in resumed_before.clients]
        pools.remove(resumed_before)
        resumed_before.close()

        # Phase 2: while the second half flows, latecomers join with ?tail= and the others resume.
        sent = [0]
        producer = threading.Thread(target=produce, args=(kafka, name, half, TOTAL, sent), daemon=True)
        producer.start()
        wait_until(lambda: sent[0] >= half + TOTAL // 6, 30, "a third of the second half to be sent")
        tail = pool([(f"/ws?tail={RING}", bearer(seller_claims(k))) for k in sellers]
                    + [(f"/ws?tail={RING}", bearer(ADMIN))])
        resumed_after = pool([(f"/ws?since={positions[k]}", bearer(seller_claims(k))) for k in sellers])
        producer.join(60)
        assert not producer.is_alive(), "the producer finished"

        seller_clients: list[tuple[int, list[dict[str, Any]], str]] = []

        def collect() -> bool:
            seller_clients.clear()
            for kind, p in (("live", live), ("subscribe everything", widen_all),
                            ("subscribe another seller", widen_other), ("tail", tail)):
                for i, client in enumerate(p.clients[:len(p.clients) - (kind == "tail")]):
                    seller_clients.append((i % SELLERS if kind != "live" else i // LIVE_PER_SELLER,
                                           records(client), kind))
            for k, client in enumerate(resumed_after.clients):
                seller_clients.append((k, records(resumed_before.clients[k]) + records(client), "resume"))
            return all(len(got) >= PER_SELLER for _, got, _ in seller_clients) and \
                all(len(records(c)) >= TOTAL for c in admins.clients + tail.clients[-1:])
        wait_until(collect, 60, "every client to have all it is owed")
        # Anything that arrives late (a duplicate, a foreign record) lands by now.
        time.sleep(0.5)
        collect()

        assert len(seller_clients) == 200
        for k, got, kind in seller_clients:
            foreign = Counter(r["attributes"]["seller"]["id"] for r in got if
                              r["attributes"]["seller"]["id"] != seller_id(k))
            assert not foreign, f"a {kind} client of {seller_id(k)} got other sellers' records: {dict(foreign)}"
            numbers = Counter(r["attributes"]["n"] for r in got)
            missing = set(range(PER_SELLER)) - set(numbers)
            duplicated = {n: c for n, c in numbers.items() if c > 1}
            assert not missing, f"a {kind} client of {seller_id(k)} missed {len(missing)}, e.g. {sorted(missing)[:5]}"
            assert not duplicated, f"a {kind} client of {seller_id(k)} got duplicates: {list(duplicated.items())[:5]}"
            assert len(got) == PER_SELLER
        for client in admins.clients + tail.clients[-1:]:
            seqs = Counter(r["attributes"]["seq"] for r in records(client))
            assert set(seqs) == set(range(TOTAL)) and max(seqs.values()) == 1, "an admin sees every record once"
        # /health, which load balancers read without a token, names no seller, subject or token.
        health = requests.get(proc.url + "/health", timeout=5).text
        assert json.loads(health)["auth"] == "jwt" and json.loads(health)["clients"] == 200 + 4
        for tenant_data in ("seller-", "user-of-", token(seller_claims(0)).split(".")[0]):
            assert tenant_data not in health
        print(f"isolation soak: {TOTAL} records of {SELLERS} sellers, 200 seller clients and 4 admins, "
              "none foreign, none missing, none twice")
    finally:
        for made in pools:
            made.close()
