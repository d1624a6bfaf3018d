# tests/fuzz/local.mk - the libFuzzer target (included from Makefile.am).
