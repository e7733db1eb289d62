# Two commands do all set-up on a fresh machine with Python and pip: `make demo` and `make test`.
PYTHON ?= python3
# The end-to-end tests mostly wait on real-time audio, so two workers (one test file each at a time) finish the
# suite in about half the time on two cores; `make test XDIST=` runs it in one process.
XDIST ?= -n 2 --dist loadfile
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LINT_PATHS := $(wildcard discord_voicerecv tests examples bench fuzz)

.PHONY: setup demo test test-ffmpeg lint unit e2e bench chaos fuzz docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m discord_voicerecv demo --seconds 10 --speakers 3 --out recordings

lint: setup
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy

# Tiers (markers in pyproject.toml): unit, e2e (the local Discord, discord.py clients, subprocess bots), slow (long
# chaos runs), timing (wall-clock and CPU-time margins: benchmarks, so `make test` passes on a loaded machine).
unit: setup
	$(PY) -m pytest -q -m "not e2e and not slow and not timing"

e2e: setup
	$(PY) -m pytest -q $(XDIST) -m "e2e and not slow and not timing"

test: lint
	$(PY) -m pytest -q $(XDIST) -m "not slow and not timing"

# The tests that run an ffmpeg, again with another one: `make test-ffmpeg FFMPEG_BINARY=/path/to/ffmpeg`.
test-ffmpeg: setup
	FFMPEG_BINARY="$(FFMPEG_BINARY)" $(PY) -m pytest -q $(XDIST) -m "ffmpeg and not slow and not timing"

bench: setup
	$(PY) -m pytest -q -m timing
	$(PY) bench/run.py

chaos: setup
	$(PY) -m pytest -q -m slow tests/chaos

fuzz: setup
	$(PY) -m pip install --quiet -e '.[fuzz]'
	$(PY) -m fuzz.run --runs 1000000

docs: setup
	$(PY) -m pip install --quiet -e '.[docs]'
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) recordings .mypy_cache .ruff_cache .pytest_cache .hypothesis
