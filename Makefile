.PHONY: setup test lint

setup:  ## install system packages (apt) and Python packages (pip)
	bash scripts/setup.sh

test:   ## the whole test suite, as CI runs it
	python3 -m pytest -q

lint:
	ruff check .
