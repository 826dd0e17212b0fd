# Two entry points: `make demo` (set up + run the CPU demo) and `make test` (set up + run the checks and tests).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The readers environment: Ultralytics (the yolo_seg reader of tests/test_convert.py) needs torchvision's metadata,
# and the torchvision wheel on the registry is built for CUDA torch, which breaks transformers when installed beside
# our CPU torch; so Ultralytics lives in its own venv that sees the runtime's packages through a .pth file.
READERS := .venv-readers
READERS_STAMP := $(READERS)/.installed-stamp

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

$(READERS_STAMP): $(STAMP) Makefile
	test -x $(READERS)/bin/python || python3 -m venv $(READERS)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
		> "$$($(READERS)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/mal-runtime.pth"
	$(READERS)/bin/python -m pip install -q --no-deps torchvision==0.28.0 ultralytics==8.4.190
	touch $(READERS_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m mal_core.cli demo --out demo_output

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) $(READERS_STAMP)
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
