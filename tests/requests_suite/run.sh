#!/usr/bin/env bash
# Run the requests project's own test suite with ResilientSession swapped in
# for requests.Session (see resilient_swap.py), against the requests version
# installed here.
#
#   bash tests/requests_suite/run.sh            # behaviour-keeping config (CI)
#   bash tests/requests_suite/run.sh defaults   # the built-in defaults (informational)
#   bash tests/requests_suite/run.sh none       # plain requests, no swap (reference)
#
# It downloads the requests source distribution matching the installed
# version (or uses $REQUESTS_SDIST, a .tar.gz path), extracts it to a temp
# dir, installs the suite's test tools if they are missing, and runs the
# tests offline (pytest-httpbin serves httpbin on loopback). Bounded: the
# download gets 60 s, the tests 150 s. Exits non-zero if any test fails.
set -euo pipefail

MODE="${1:-keep}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/requests-suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

VERSION="$("$PY" -c 'import requests; print(requests.__version__)')"
echo "requests_suite: requests $VERSION, config=$MODE, package under test: $ROOT"

# The suite's own test tools (from its requirements-dev.txt), only if missing.
missing=()
"$PY" -c 'import pytest_httpbin' 2>/dev/null || missing+=("pytest-httpbin==2.1.0" "httpbin~=0.10.0")
"$PY" -c 'import trustme' 2>/dev/null || missing+=("trustme")
"$PY" -c 'import pytest_mock' 2>/dev/null || missing+=("pytest-mock")
"$PY" -c 'import socks' 2>/dev/null || missing+=("PySocks")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "requests_suite: installing ${missing[*]}"
    timeout 120 "$PY" -m pip install -q "${missing[@]}"
fi
# httpbin 0.10.2+ pins greenlet < 3 on Python < 3.12 (for a gevent server the
# suite never starts) while gunicorn's gevent workers, in our test extra, need
# greenlet 3: pip then settles on httpbin 0.10.0, which does not import with
# Werkzeug 3. Put a fixed httpbin in without its pins.
if ! "$PY" -c 'import httpbin' 2>/dev/null; then
    echo "requests_suite: httpbin does not import; installing httpbin>=0.10.2 without its pins"
    timeout 120 "$PY" -m pip install -q --no-deps 'httpbin>=0.10.2'
fi

if [ -n "${REQUESTS_SDIST:-}" ]; then
    SDIST="$REQUESTS_SDIST"
else
    timeout 60 "$PY" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "requests==$VERSION" 2>"$WORK/pip.err" \
        || { cat "$WORK/pip.err" >&2; echo "requests_suite: cannot download requests $VERSION; set REQUESTS_SDIST" >&2; exit 2; }
    SDIST="$(ls "$WORK"/requests-*.tar.gz)"
fi
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/requests-$VERSION"
[ -d "$SRC/tests" ] || { echo "requests_suite: no tests/ in $SDIST" >&2; exit 2; }

cd "$SRC"
# The package under test first on the path, then the swap plugin; the suite
# itself tests the installed requests (its src/ is not put on the path).
set +e
env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
    PYTHONPATH="$ROOT:$HERE${PYTHONPATH:+:$PYTHONPATH}" RESILIENT_SUITE_CONFIG="$MODE" \
    timeout 150 "$PY" -m pytest tests -p resilient_swap -p no:cacheprovider -q -rfE \
    -W ignore::DeprecationWarning --junitxml="$WORK/junit.xml" >"$WORK/out.txt" 2>&1
status=$?
[ "$status" -eq 124 ] && echo "requests_suite: the tests were stopped after 150 s" >&2
grep -E '^(FAILED|ERROR) |^resilient_swap:|^=* ?[0-9]+ (passed|failed)' "$WORK/out.txt" | head -100
set -e

# One summary line from the JUnit report (robust to pytest's wording).
"$PY" - "$WORK/junit.xml" "$MODE" "$status" <<'EOF'
import sys
import xml.etree.ElementTree as ET

path, mode, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    passed = tests - failures - errors - skipped
    print(f"requests_suite ({mode}): {passed} passed, {failures + errors} failed, {skipped} skipped "
          f"in {float(suite.get('time', 0)):.1f}s (pytest exit {status})")
except (OSError, ET.ParseError) as e:
    print(f"requests_suite ({mode}): no report ({e}); pytest exit {status}")
EOF
exit "$status"
