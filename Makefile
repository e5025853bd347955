# One command each on a fresh machine: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench proto venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dumper demo -o out/replay.html

test: $(STAMP)
	$(BIN)/ruff check dumper tests bench
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check dumper tests bench

# Regenerate dumper/images/proto/*_pb2.py from proto/*.proto (a test fails when they are stale).
proto: $(STAMP)
	$(BIN)/python -m dumper.images.protogen

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis out
