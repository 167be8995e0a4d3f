#!/usr/bin/env bash
# Compile one snippet that must fail, and check the compiler printed the readable message written
# on its "// expect:" line. Usage: check.sh CXX INCLUDE_DIR FILE
set -u
cxx=$1 inc=$2 file=$3
expect=$(sed -n 's|^// expect: ||p' "$file")
if out=$("$cxx" -std=c++20 -fsyntax-only -I"$inc" "$file" 2>&1); then
  echo "FAIL: $file compiled, but it must be rejected"; exit 1
fi
if grep -qF -- "$expect" <<<"$out"; then
  echo "ok: $file is rejected with: $expect"; exit 0
fi
echo "FAIL: $file was rejected, but without the message: $expect"; echo "$out" | head -20; exit 1
