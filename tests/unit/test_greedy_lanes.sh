#!/bin/sh
# tests/unit/test_greedy again with the decode products in a GPU layout (8 lanes per
# row: LayerNorms folded into the products, the argmax merged from row values),
# forced with PLDR_WG on whatever device runs the tests.
builddir=$(dirname "${PLDR_BIN:-./pldr}")
PLDR_WG=gemv=64,rows=8,attpre=1 exec "$builddir/tests/unit/test_greedy"
