# doc/local.mk - man pages (included from Makefile.am).
