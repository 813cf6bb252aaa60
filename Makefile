# fitcheck. `make demo` runs the app on real data; `make test` runs the suite on SQLite and PostgreSQL.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
UV ?= uv
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-sqlite test-postgres lint services-start services-stop bench tour clean

install: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	$(UV) sync --frozen
	@touch $@

demo: install
	bin/demo

lint: install
	$(PY) -m ruff check .
	FITCHECK_ENV=test $(PY) manage.py makemigrations --check --dry-run

# Both passes start a real Celery worker: on SQLite with the embedded SQLite-file broker (the demo's
# setup), on PostgreSQL with Redis (production's).
# One torch thread per process: the tests train tiny models on tiny tensors, where threads only wait on
# each other (a stage-2 test took 17.9 s with 2 threads under load, 1.9 s with one). Workers inherit it.
test: lint services-start
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgres

test-sqlite: install
	@echo "== tests on SQLite, Celery broker: SQLite file =="
	env -u DATABASE_URL -u CELERY_BROKER_URL OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: install services-start
	@echo "== tests on PostgreSQL, Celery broker: Redis =="
	eval "$$(bin/services env)" && OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest $(PYTEST_ARGS)

services-start:
	bin/services start

services-stop:
	bin/services stop

bench: install
	$(PY) bench/match_recall.py
	$(PY) bench/api_latency.py
	$(PY) bench/consensus.py

# The screenshots of docs/tour.md, taken by the e2e tests on a small demo in headless Chromium.
tour: install
	env -u DATABASE_URL -u CELERY_BROKER_URL FITCHECK_TOUR_DIR=docs/tour $(PY) -m pytest -q \
		tests/e2e/test_tour.py tests/e2e/test_verify_phone.py

clean: services-stop
	rm -rf var
