# bench/local.mk - benchmarks: built by make, run by hand.
