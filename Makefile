# The two commands of the README, and what they need.
#   make run   - the service; with no KAFKA_BROKER_URL, a local Kafka and collector too
#   make test  - every test, against real Kafka, a real collector and real Gunicorn
#   make demo  - make run's stack plus synthetic logs; open the printed /viewer URL
#   make mutate - mutation testing of logger/ against tests/unit (mutmut; docs/TESTING.md)
#                 MUTATE='logger.filters.*' for one module

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run demo test unit mutate kafka-jars bench clean

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

# mutmut mutates logger/ (setup.cfg's [mutmut] section) and runs, for each mutant, the unit
# tests that cover the mutated function; then the per-module table (devstack/mutation.py).
# A fresh mutants/ folder each time: verdicts from older tests would be kept otherwise.
MUTATE ?=
MUTATE_JOBS ?= 2
MUTATE_TIMEOUT ?= 3600
mutate: $(VENV)/.installed
	rm -rf mutants
	timeout $(MUTATE_TIMEOUT) $(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS) $(if $(MUTATE),"$(MUTATE)") > mutants.log 2>&1 \
		|| { tail -c 2000 mutants.log; exit 1; }
	$(PY) -m devstack.mutation

clean:
	rm -rf $(VENV) mutants mutants.log
