"""The start-up floor: what the architecture costs before any of our code runs.

Gunicorn with gevent-websocket's worker serving a Flask app that answers
``GET /health`` and nothing else: no settings, no hub, no Kafka, no OpenTelemetry.
``bench.fanout --only startup`` launches it next to the service and the peer, so
"launch → first /health 200" splits into the part Gunicorn, gevent and Flask
take (this) and the part that is ours (the service minus this).
"""

from flask import Flask

app = Flask(__name__)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
