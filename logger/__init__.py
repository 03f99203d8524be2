"""logger-service: stream logs from Kafka to WebSocket clients and an OTLP collector.

Importing the package starts nothing: build the Flask app with
:func:`logger.app.create_app` and start its pipeline from Gunicorn's
``post_worker_init`` hook (see ``gunicorn.conf.py``).
"""

__version__ = "0.1.0"
