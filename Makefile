.PHONY: help setup demo test lint bench picture
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
	.venv/bin/python bench/long_drives.py --json out/bench/long_drives.json
	.venv/bin/python bench/report.py out/bench/readers.json out/bench/throughput.json \
		out/bench/throughput-lz4.json out/bench/profile.json out/bench/latency.json \
		out/bench/memory.json out/bench/adversarial.json out/bench/quality.json \
		out/bench/long_drives.json

ROAD ?= ../shared/data/road
PICTURE := docs/img/road-held-out-drive.png
picture: setup   ## README's figure from the ROAD captures (ROAD=dir): train on 2 drives, evaluate the 3rd
	@test -f $(ROAD)/reverse_light_off_attack_1.csv || { echo "make picture: no ROAD captures in $(ROAD) (set ROAD=DIR)"; exit 2; }
	rm -rf out/picture && mkdir -p out/picture docs/img
	.venv/bin/canwatch train --brand road --out out/picture/models $(ROAD)/fuzzing_attack_1.csv \
		$(ROAD)/correlated_signal_attack_2.csv $(ROAD)/correlated_signal_attack_2_masquerade.csv
	.venv/bin/canwatch evaluate --models out/picture/models --brand road --plot $(PICTURE) \
		$(ROAD)/reverse_light_off_attack_1.csv $(ROAD)/reverse_light_off_attack_1_masquerade.csv
