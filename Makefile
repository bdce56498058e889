# Single entry for the project. Every target sets up .venv first (seconds when it is already up to date).
# CPU set by default; CLEAN_ROS_CUDA=cu126 (your CUDA's spconv tag) selects the GPU builds.
PY := .venv/bin/python

.PHONY: setup test compress bench clean-env

setup:
	@scripts/setup_env.sh

test: setup
	$(PY) -m pytest

compress: setup
	$(PY) training/compress.py $(ARGS)

bench: setup
	$(PY) bench/run_all.py $(ARGS)

clean-env:
	rm -rf .venv build install log
