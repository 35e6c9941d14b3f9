# Two commands for a new machine (see README):
#   make demo   set up, then run the main job on the embedded default data
#   make test   set up, then run the test suite (everything; what CI runs)
#   make test-fast  the unit tests and the integration tests not marked slow, ray, cluster or
#               deepspeed (markers in pyproject.toml): a quick check while working
# Both create or reuse .venv from requirements.lock (the pinned working set) and, when run as
# root on Debian/Ubuntu, install the system packages FFCV and the real-data demo need.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev dataset-fashion-mnist
# As root only: the loopback `ray up` test (tests/integration_tests/test_cluster_rayup.py) runs
# sshd on 127.0.0.1 for a throwaway user; `ray up` syncs files with rsync; the test reads
# listening ports with ss (iproute2); nc (`nc -z HOST PORT`) checks a node's port by hand.
CLUSTER_PKGS := openssh-server rsync netcat-openbsd iproute2
STAMP   := $(VENV)/.seltrain-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
# DeepSpeed JIT-builds its CPU shm_comm op (~30 s); keep it across runs, inside the venv it
# was built for: checkouts sharing one folder rebuild the op over a library that the other's
# running ranks have loaded, and those ranks abort at exit.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
PYTEST_ARGS ?=

.PHONY: setup demo train-demo test test-fast bench sysdeps clean

setup: sysdeps $(STAMP)

sysdeps:
	@if pkg-config --exists opencv4 libturbojpeg 2>/dev/null && \
	    [ -d /usr/share/datasets/fashion-mnist ] && \
	    { [ "$$(id -u)" != 0 ] || { [ -x /usr/sbin/sshd ] && command -v rsync && command -v nc && command -v ss; } >/dev/null; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages: $(APT_PKGS) $(CLUSTER_PKGS)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) $(CLUSTER_PKGS) >/dev/null; \
	else \
	    echo "seltrain needs these system packages (Debian/Ubuntu names): $(APT_PKGS)"; \
	    echo "  elsewhere: pkg-config, OpenCV 4 dev files, libjpeg-turbo dev files; Fashion-MNIST IDX files for the demo"; \
	    echo "  install them (e.g. sudo apt-get install $(APT_PKGS)) and run make again"; \
	fi

$(STAMP): requirements.lock pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.seltrain-* && touch $@

demo: setup
	$(VENV)/bin/seltrain tune --search quickstart

test: setup
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not ray and not cluster and not deepspeed" $(PYTEST_ARGS) tests

bench: setup
	$(PY) benchmarks/bench_step.py

clean:
	rm -rf runs .pytest_cache
