.PHONY: help setup demo test lint bench
help:            ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
setup:           ## create .venv and install canwatch with its test tools
	./scripts/setup.sh
demo: setup      ## run the zero-setup demo
	.venv/bin/canwatch demo
test:            ## install everything the tests need, then lint, check the layers and run the suite
	./scripts/setup.sh --system
	.venv/bin/ruff check detector replay tests bench dashboards
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q -n auto --dist loadfile
lint:            ## ruff and the import layers
	.venv/bin/ruff check detector replay tests bench dashboards
	.venv/bin/lint-imports
bench:           ## run every benchmark (tens of minutes; JSON in out/bench), then a summary table
	mkdir -p out/bench
	.venv/bin/python bench/readers.py --json out/bench/readers.json
	.venv/bin/python bench/throughput.py --json out/bench/throughput.json
	.venv/bin/python bench/throughput.py --compression lz4 --json-frames 0 --json out/bench/throughput-lz4.json
	.venv/bin/python bench/profile_detect.py --json out/bench/profile.json
	.venv/bin/python bench/latency.py --json out/bench/latency.json
	.venv/bin/python bench/memory.py --json out/bench/memory.json
	.venv/bin/python bench/adversarial.py --json out/bench/adversarial.json
	.venv/bin/python bench/quality.py --json out/bench/quality.json
	.venv/bin/python bench/report.py out/bench/readers.json out/bench/throughput.json \
		out/bench/throughput-lz4.json out/bench/profile.json out/bench/latency.json \
		out/bench/memory.json out/bench/adversarial.json out/bench/quality.json
