# The two README commands: `make bench` and `make test`. Both build the environment first.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-installed
# The dev environment pins torch; the package itself only asks for torch>=2.9.
DEV_REQUIREMENTS := torch==2.14.1 torchvision==0.29.1 numpy scikit-build-core cmake ninja \
                    pytest pytest-benchmark hypothesis rich matplotlib scikit-learn
BUILD_LOG := build/pip-install.log
# OFF for fast CPU-only rebuilds: make test PFL_WITH_CUDA=OFF
PFL_WITH_CUDA ?= ON
# Triton kernels run under the interpreter on machines without a GPU.
TEST_ENV := PYFASTLAB_CHECK=1 TRITON_INTERPRET=$(shell nvidia-smi -L >/dev/null 2>&1 && echo 0 || echo 1)

.PHONY: env install test bench wheel clean mutants

env: $(DEPS)

$(DEPS): Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q $(DEV_REQUIREMENTS)
	touch $@

install: $(DEPS)
	@mkdir -p build
	@echo "building pyfastlab (log: $(BUILD_LOG))"
	@$(VPY) -m pip install -v --no-build-isolation --no-deps -C cmake.define.PFL_WITH_CUDA=$(PFL_WITH_CUDA) . \
	  > $(BUILD_LOG) 2>&1 \
	  || { tail -n 60 $(BUILD_LOG); exit 1; }
	@grep -h -- '-- pyfastlab:' $(BUILD_LOG) | sed 's/^.*-- //' | sort -u

test: install
	cd tests && $(TEST_ENV) ../$(VENV)/bin/pytest -q -p no:cacheprovider --benchmark-disable . ../bench

# The mutation gate (tests/mutants): curated bugs applied to a copy of the tree in build/mutants,
# rebuilt CPU-only there; never touches the .venv install. Not part of `make test`.
mutants: $(DEPS)
	$(VPY) tests/mutants/run.py

bench: install
	$(VENV)/bin/pyfastlab bench

wheel: $(DEPS)
	$(VPY) -m pip wheel --no-build-isolation --no-deps -C cmake.define.PFL_WITH_CUDA=$(PFL_WITH_CUDA) -w dist .

clean:
	rm -rf build dist
