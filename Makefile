# The two commands of the README: `make demo` and `make test`. Both create (or reuse) the local
# virtualenv .venv and install the package into it; nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

# overrides: make demo ARGS="--num_train_epochs 5 --output_dir runs/short"
demo: $(STAMP)
	$(BIN)/behavior-lm train recipes/quickstart/gpt2-ml-100k.yaml $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

install: $(STAMP)

# torch is pinned and installed first: an open range would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,text,distributed]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .cache
