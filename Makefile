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

# LiteRT's converter (docs/edge.md), without the dependencies it declares but yolopt's conversion never imports
# (transformers, kagglehub, sentencepiece, xdsl: 330 MB, and typing-extensions<4.13); what it does import is in
# the edge extra. Keep in step with yolopt.export.edge.LITERT_CONVERTER.
LITERT_CONVERTER := litert-torch==0.10.0 litert-converter==0.5.0

# ExecuTorch (docs/edge.md): its exporter (executorch.exir, the XNNPACK partitioner) and its Python runtime, without
# the dependencies it declares but neither imports (coremltools, pandas, hydra-core, pytorch-tokenizers,
# scikit-learn...); of what they do import, ruamel.yaml and tabulate are the ones the edge extra does not bring (torchao,
# flatbuffers, sympy come with the edge extra and torch). Keep in step with yolopt.export.edge.EXECUTORCH.
EXECUTORCH := executorch==1.5.1 ruamel.yaml==0.19.1 tabulate==0.10.0

# torch: keep an importable torch (e.g. a user's CUDA build); otherwise take the local CPU wheel.
$(STAMP): $(VPY) pyproject.toml Makefile
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[deploy,edge,test]"
	$(VPY) -m pip install -q --no-deps $(LITERT_CONVERTER)
	$(VPY) -m pip install -q --no-deps $(EXECUTORCH)
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

# One pytest-xdist worker per usable core (at most 2), each pinned to its own core (tests/conftest.py): the many
# single-threaded parts of the suite (exports, mAP, start-ups) run side by side; `long` tests start first.
test: sysdeps $(STAMP)
	$(VPY) -m pytest tests -q -n auto --dist worksteal

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
