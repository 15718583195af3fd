# yolopt set-up: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install everything the project needs into it.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# torch: keep an importable torch (e.g. a user's CUDA build); otherwise take the local CPU wheel.
$(STAMP): $(VPY) pyproject.toml
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[deploy,test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/yolopt demo

test: $(STAMP)
	$(VPY) -m pytest tests -q

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
