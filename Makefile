# Two entry points: `make demo` (set up + run the CPU demo) and `make test` (set up + run the checks and tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mal_core.cli demo --out demo_output

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m codegen --check
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf demo_output bench_output mal_jobs

# Chromium + chromedriver for tests/test_review_browser.py (Debian packages; CI runs as root with Debian's mirrors)
.PHONY: browser-deps
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)
test: browser-deps
