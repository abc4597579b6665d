# The two set-up commands (see README.md): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.ini

.PHONY: run test fuzz invariant soak bench bench-export bench-memory bench-ledger bench-claims bench-reconcile bench-stow bench-cpu bench-page bench-check install install-test install-service lint clean

# setuptools warns on every editable install that folders in the working
# directory may shadow the package: true of every checkout, so not shown.
QUIET_BUILD = PYTHONWARNINGS=ignore::UserWarning

$(BIN)/dicom-adapter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(QUIET_BUILD) $(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/dicom-adapter
	$(QUIET_BUILD) $(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/dicom-adapter

install-test: $(VENV)/.test-deps

## Install and start the adapter in the foreground on config.ini.
run: install
	$(BIN)/dicom-adapter run --config $(CONFIG)

## Install test dependencies, lint, and run the whole test suite.
test: install-test
	$(BIN)/ruff check .
	$(BIN)/pytest

## Protocol fuzzing for as long as asked: make fuzz FUZZ_SECONDS=600 [FUZZ_SEED=N] (default: a new seed).
fuzz: install-test
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),600) FUZZ_SEED=$(or $(FUZZ_SEED),$(shell date +%s)) \
		$(BIN)/pytest -s -p no:cacheprovider tests/test_fuzz_protocol.py -k fuzzed

## The delivery invariant under many random destination mixes and kill times: make invariant INVARIANT_RUNS=20.
invariant: install-test
	for run in $$(seq $(or $(INVARIANT_RUNS),10)); do \
		INVARIANT_SEED=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ') \
			$(BIN)/pytest -q -s -p no:cacheprovider tests/test_delivery_invariant.py || exit 1; \
	done

## Sustained load with reloads and status calls; RSS, threads and fds over time and the RSS slope:
## make soak SOAK_SECONDS=1800 SOAK_SENDERS=4 SOAK_RELOAD=30 SOAK_STATUS=10 (see bench/soak.py).
soak: install-test
	$(BIN)/python bench/soak.py --corpus var/bench-corpus --seconds $(or $(SOAK_SECONDS),1800) \
		--senders $(or $(SOAK_SENDERS),4) --reload-every $(or $(SOAK_RELOAD),30) \
		--status-every $(or $(SOAK_STATUS),10)

## Install the systemd unit (edit its paths first if the project is not in /opt/dicom-adapter).
install-service:
	install -m 0644 systemd/dicom-adapter.service /etc/systemd/system/dicom-adapter.service
	systemctl daemon-reload

## Receive benchmark: the adapter (SQLite and PostgreSQL ledgers) against DCMTK storescp, minimal pynetdicom receivers and Orthanc (minutes; see bench/README.md).
bench: install-test
	$(BIN)/python bench/run.py --corpus var/bench-corpus

## CPU per received instance, small x4: the adapter's SCP process, intake, watcher and SQLite against Orthanc and storescu, with the SCP's profile (py-spy; ~1 minute; see bench/cpu.py).
bench-cpu: install-test
	$(BIN)/python bench/cpu.py --corpus var/bench-corpus --profile 20

## STOW-RS receive rate (dicomweb-client, curl) against DIMSE (storescu), the same files into the adapter, 200 CT and 1000 small (~3 minutes; see bench/stow.py).
bench-stow: install-test
	$(BIN)/python bench/stow.py --corpus var/bench-corpus

## Export rate of the adapter's SCU against DCMTK storescu, 500 CT and 2000 small (minutes; see bench/export.py).
bench-export: install-test
	$(BIN)/python bench/export.py --corpus var/bench-corpus --full

## Peak RSS of the adapter receiving one 1 GB multi-frame instance (builds it once, ~1 GB; see bench/memory.py).
bench-memory: install-test
	$(BIN)/python bench/memory.py --corpus var/bench-corpus --megabytes 1024

## Ledger at 1,000,000 instances, SQLite beside PostgreSQL (a throwaway cluster; apt-get install postgresql):
## ingest rate, status and cookbook query times (~11 minutes, ~4 GB in $TMPDIR; LEDGER_BACKEND=sqlite for one).
bench-ledger: install
	$(BIN)/python bench/ledger_scale.py --instances 1000000 --backend $(or $(LEDGER_BACKEND),both)

## Claims per second with 1 and 4 claimers at once, SQLite and PostgreSQL, no double claims (~3 minutes).
bench-claims: install-test
	$(BIN)/python bench/claims.py --groups 2000 --claimers 1,4 --repeat 3

## One reconcile pass over a spool of 1,000,000 files against `find` (~10 minutes, builds the spool in $TMPDIR).
bench-reconcile: install
	$(BIN)/python bench/reconcile_scale.py --files 1000000

## The status page over a ledger of 1,000,000 instances: `GET /`, a study page and /healthz from a
## running adapter, and each read of the overview alone (SQLite; --backend postgresql for the other).
bench-page: install
	$(BIN)/python bench/page_scale.py --instances 1000000

## A tiny run of every bench/ script, checking each still runs and prints its table (a minute or two; not in `make test`).
bench-check: install-test
	$(BIN)/pytest -m bench

lint: install-test
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache
