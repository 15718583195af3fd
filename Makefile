# yolopt set-up: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install everything the project needs into it.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo sysdeps test clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# torch: keep an importable torch (e.g. a user's CUDA build); otherwise take the local CPU wheel.
$(STAMP): $(VPY) pyproject.toml
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[deploy,edge,test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yolopt demo

# System packages the tests use: Debian's chromium renders the optimize report in a real browser.
# Installed when missing and we can (root with apt-get); otherwise it says why and the browser test skips.
sysdeps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "sysdeps: no apt-get, chromium not installed (browser test will skip)"; \
	elif [ "$$(id -u)" != 0 ]; then echo "sysdeps: not root, chromium not installed (browser test will skip)"; \
	else { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "sysdeps: apt-get install chromium failed (browser test will skip)"; fi

test: sysdeps $(STAMP)
	$(VPY) -m pytest tests -q

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
