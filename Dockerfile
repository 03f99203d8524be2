# syntax=docker/dockerfile:1
# logger-service: gunicorn + gevent-websocket + Flask. Build: docker build -t logger-service .

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-compile -r /tmp/requirements.txt

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=6006
# A fixed numeric user, so orchestrators can check runAsNonRoot without /etc/passwd.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=10001:10001 logger/ ./logger/
COPY --chown=10001:10001 wsgi.py gunicorn.conf.py ./
USER 10001:10001
EXPOSE 6006
# Liveness only: GET / answers while the worker runs (see /health for Kafka and collector state).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"6006\")}/', timeout=2)"]
# Gunicorn drains on SIGTERM within GRACEFUL_TIMEOUT (20 s): keep the orchestrator's
# grace period longer (Kubernetes' default is 30 s).
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
