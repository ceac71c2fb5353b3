# Two entry points on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export EDGEC_CACHE ?= $(CURDIR)/.cache/edgec

.PHONY: demo test install node-deps bench-fusion lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[zoo,dev]"
	touch $(STAMP)

install: $(STAMP)

# onnxruntime-node for the cross-runtime test. ONNXRUNTIME_NODE_INSTALL=skip stops its post-install
# step from fetching GPU binaries from outside; the CPU binding ships inside the npm package.
node-deps:
	@if command -v npm >/dev/null 2>&1; then \
	  test -d tests/node/node_modules/onnxruntime-node || \
	  (cd tests/node && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --silent) || \
	  echo "onnxruntime-node could not be installed; the node check will skip"; \
	else echo "npm not found; the node check will skip"; fi

demo: $(STAMP)
	rm -rf demo-bundle
	$(BIN)/edgec build zoo:mnist-resnet --target android-arm64 --passes cleanup,fuse -o demo-bundle
	$(BIN)/edgec verify demo-bundle
	$(BIN)/edgec profile demo-bundle --runs 50 --warmup 5

test: $(STAMP) node-deps
	$(BIN)/python -m pytest -q -n 2 tests

bench-fusion: $(STAMP)
	$(BIN)/python bench/fusion.py

lint: $(STAMP)
	$(BIN)/ruff check compiler passes runtime targets models tests bench

clean:
	rm -rf $(VENV) .cache demo-bundle
