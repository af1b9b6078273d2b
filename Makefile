.PHONY: setup test test-oldest test-newest lint docs fuzz

setup:  ## install system packages (apt) and Python packages (pip)
	bash scripts/setup.sh

test:   ## the whole test suite, as CI runs it: one pytest worker per core, each test file on one worker
	python3 -m pytest -q -n auto --dist loadfile

test-oldest:  ## the suite on the oldest supported torch (a virtual environment; see scripts/test_torch.sh)
	bash scripts/test_torch.sh 2.5.1 0.20.1

test-newest:  ## the suite on the newest supported torch
	bash scripts/test_torch.sh 2.15.0 0.29.2

lint:
	ruff check .

docs:   ## serve the documentation site at http://127.0.0.1:8000 (mkdocs-material; built strictly by the tests)
	python3 -m mkdocs serve

fuzz:   ## the config fuzzer at length: 400 fresh random draws (CI runs 25 fixed ones); see docs/reliability.md
	MIXERLAB_FUZZ_EXAMPLES=400 MIXERLAB_FUZZ_RANDOM=1 python3 -m pytest -q tests/test_fuzz_config.py
