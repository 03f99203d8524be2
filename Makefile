# The two commands of the README, and what they need.
#   make run   - the service; with no KAFKA_BROKER_URL, a local Kafka and collector too
#   make test  - every test, against real Kafka, a real collector and real Gunicorn
#   make demo  - make run's stack plus synthetic logs; open the printed /viewer URL

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run demo test unit kafka-jars bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

kafka-jars: $(VENV)/.installed
	$(PY) -m devstack.kafka fetch

run: $(VENV)/.installed
	$(PY) -m devstack

demo: $(VENV)/.installed
	$(PY) -m devstack.demo

test: kafka-jars
	$(PY) -m pytest

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV)
