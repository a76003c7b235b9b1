#!/usr/bin/env bash
# Run SyTest against weft, with the driver in this directory (SyTest/Homeserver/Weft.pm).
#   tests/sytest/run.sh PATH/TO/weft [TEST_FILES...]
# TEST_FILES are paths under the suite's directory (files, or directories for all their files, e.g.
# tests/10apidoc tests/30rooms/01state.pl); none = the whole suite.
# Env: SYTEST_DIR (default /work/shared/sytest: suite/, perl5lib/, setup.sh); SYTEST_OUT (default ./sytest-out)
# gets tap.log and each server's directory (weft.log, data/); SYTEST_ROOM_VERSION (default 10);
# SYTEST_PORT_RANGE (default 8800:8899); more run-tests.pl flags in SYTEST_ARGS (e.g. --weft-tls-proxy, -v).
# Prints the failing tests and 'sytest: N passed, N failed' last; exits 0 only if nothing failed.
# Skips (exit 0) when SyTest is not installed here.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sytest=${SYTEST_DIR:-$(cd "$here/../.." && pwd)/../shared/sytest}
if [ ! -d "$sytest/suite" ]; then
  echo "sytest: skipped: SyTest not found at $sytest (set SYTEST_DIR)"
  exit 0
fi
bin=${1:?usage: tests/sytest/run.sh PATH/TO/weft [TEST_FILES...]}; shift
[ -x "$bin" ] || { echo "sytest: $bin is not an executable weft binary" >&2; exit 2; }
out=$(mkdir -p "${SYTEST_OUT:-./sytest-out}" && cd "${SYTEST_OUT:-./sytest-out}" && pwd)
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
# Our driver only: the shared driver/ directory is left out so that exactly one
# SyTest::HomeserverFactory::Weft exists for run-tests.pl to find.
export PERL5LIB="$sytest/perl5lib:$here${PERL5LIB:+:$PERL5LIB}"
mkdir -p "$out/work"
cd "$sytest/suite" || exit 2
# run-tests.pl takes files only: expand directories (tests/30rooms) to their .pl files.
files=()
for arg in "$@"; do
  if [ -d "$arg" ]; then
    while IFS= read -r f; do files+=("$f"); done < <(find "${arg%/}" -name '*.pl' | sort)
  else
    files+=("$arg")
  fi
done
# shellcheck disable=SC2086
./run-tests.pl -I Weft --weft-binary "$bin" --room-version "${SYTEST_ROOM_VERSION:-10}" \
  --port-range "${SYTEST_PORT_RANGE:-8800:8899}" --work-directory "$out/work" \
  -O tap ${SYTEST_ARGS:-} ${files[@]+"${files[@]}"} > "$out/tap.log" 2>&1
# With a blacklist (-B, tests/sytest/blacklist.txt), the tests on it that
# fail are "(expected fail)": counted apart, and they do not fail the run.
# Tests on it that pass are listed, to be taken off it.
pass=$(grep -cE '^ok [0-9]+' "$out/tap.log")
fail=$(grep -E '^not ok [0-9]+' "$out/tap.log" | grep -cv '(expected fail)')
expected=$(grep -cE '^not ok [0-9]+ \(expected fail\)' "$out/tap.log")
grep -E '^not ok [0-9]+' "$out/tap.log" | grep -v '(expected fail)' | head -50
newly=$(grep -cE '^ok [0-9]+ \(expected fail\)' "$out/tap.log")
if [ "$newly" -gt 0 ]; then
  echo "sytest: $newly blacklisted tests pass (take them off tests/sytest/blacklist.txt if they keep passing):"
  grep -E '^ok [0-9]+ \(expected fail\)' "$out/tap.log" | sed -E 's/^ok [0-9]+ \(expected fail\) //; s/ # TODO.*$//; s/ \([0-9]+ subtests\)$//'
fi
echo "sytest: $pass passed, $fail failed${expected:+, $expected known failures}"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
