.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m examples.demo

test: setup
	.venv/bin/python -m pytest -q tests

bench: setup
	.venv/bin/python -m benchmarks.run
