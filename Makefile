# The two commands of the README's quick start.
.PHONY: run test bench

# Set up the CPU runtime and run the default pipeline on the bundled sample clip.
run:
	bash scripts/setup.sh runtime
	.venv/bin/python -m engine run pipeline.toml

# Set up everything (training stack, test tools) and run the test suite.
test:
	bash scripts/setup.sh all
	.venv/bin/python -m pytest -q

bench:
	.venv/bin/python benchmarks/bench_decode_detect.py
