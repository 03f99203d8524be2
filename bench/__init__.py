"""Benchmarks of logger-service against a peer built on asyncio ``websockets``.

``python -m bench.fanout`` runs the suite (see ``docs/BENCHMARKS.md``):

* ``fanout.py``  -- orchestration: Kafka, both servers, the scenarios, the table and JSON;
* ``peer.py``    -- the peer server (asyncio ``websockets`` + kafka-python in a thread);
* ``clients.py`` -- the load-client process (thousands of raw WebSocket clients on asyncio);
* ``forward.py`` -- the forward-path scenario, with the stock OpenTelemetry logging sender;
* ``procstat.py`` -- /proc readings (RSS, CPU), file-descriptor limits, test records.
"""
