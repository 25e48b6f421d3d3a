# fem_mfc: the two commands of the README.  Both set everything up on a fresh machine
# (bin/fem-env builds the Debian 13 environment once when DOLFINx 0.9 is not importable).
#   make demo   -- the flagship demo (two moons trained by mean-field control) -> results/demo/
#   make test   -- the whole test suite, serial and under mpirun -n 2
ENV := bin/fem-env
PYTEST := python3 -m pytest -p no:cacheprovider --color=no
NP ?= 2

.PHONY: demo test test-serial test-mpi env bench docs

demo:
	$(ENV) python3 demos/demo_moons.py --out results/demo

test: test-serial test-mpi

test-serial:
	$(ENV) $(PYTEST) -q tests

test-mpi:
	$(ENV) mpirun -n $(NP) $(PYTEST) -q --with-mpi -m mpi tests

env:
	$(ENV) python3 -m fem_mfc info

docs:
	$(ENV) python3 -m fem_mfc schema > docs/config.md

bench:
	$(ENV) python3 benchmarks/run_all.py
