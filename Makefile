.PHONY: help setup demo test lint bench
help:            ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
setup:           ## create .venv and install canwatch with its test tools
	./scripts/setup.sh
demo: setup      ## run the zero-setup demo
	.venv/bin/canwatch demo
test:            ## install everything the tests need, then lint and run the suite
	./scripts/setup.sh --system
	.venv/bin/ruff check detector replay tests bench
	.venv/bin/python -m pytest -q
lint:            ## ruff
	.venv/bin/ruff check detector replay tests bench
bench:           ## run the benchmarks (minutes)
	.venv/bin/python bench/readers.py
