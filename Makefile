.PHONY: setup test test-oldest test-newest lint docs

setup:  ## install system packages (apt) and Python packages (pip)
	bash scripts/setup.sh

test:   ## the whole test suite, as CI runs it
	python3 -m pytest -q

test-oldest:  ## the suite on the oldest supported torch (a virtual environment; see scripts/test_torch.sh)
	bash scripts/test_torch.sh 2.5.1 0.20.1

test-newest:  ## the suite on the newest supported torch
	bash scripts/test_torch.sh 2.15.0 0.29.2

lint:
	ruff check .

docs:   ## serve the documentation site at http://127.0.0.1:8000 (mkdocs-material; built strictly by the tests)
	python3 -m mkdocs serve
