# Two commands for a newcomer: `make demo` (build the sample package) and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
SAMPLE  ?= ../shared/data/video/German_20s.mp4
PACKAGE ?= models/anchor

.PHONY: setup demo test bench lock clean

# ffmpeg and chromium from Debian, then $(VENV) from requirements.lock (hashes checked).
setup:
	@VENV=$(VENV) scripts/setup.sh

# After editing pyproject.toml's dependencies: re-resolve and re-pin (uv pip compile), then `make setup`.
lock:
	@VENV=$(VENV) scripts/lock.sh

demo: setup
	$(VENV)/bin/lipsync-pack build $(SAMPLE) -o $(PACKAGE) --force
	$(VENV)/bin/lipsync-pack verify $(PACKAGE)
	$(VENV)/bin/lipsync-pack inspect $(PACKAGE)
	@echo "contact sheet: $(PACKAGE)/preview.png"

test: setup
	$(PY) -m pytest tests

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=min,median,max,rounds \
		--benchmark-json=reports/benchmarks.json

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
