#!/usr/bin/env bash
# Run httpx's own tests of AsyncClient with AsyncResilientClient swapped in
# for httpx.AsyncClient (see httpx_swap.py), against the httpx version
# installed here: every test module of its sdist that uses AsyncClient.
#
#   bash tests/httpx_suite/run.sh          # swapped (CI)
#   bash tests/httpx_suite/run.sh none     # plain httpx, no swap (reference)
#
# It downloads the httpx source distribution matching the installed version
# (or uses $HTTPX_SDIST, a .tar.gz path), extracts it to a temp dir, installs
# the suite's test tools if they are missing (its server is uvicorn on
# loopback; it runs each async test on asyncio and trio), and runs the tests
# offline (`-m "not network"`). Bounded: the download gets 60 s, the tests
# 150 s. Exits non-zero if any test fails. What cannot pass is listed in
# docs/compatibility.md.
set -euo pipefail

MODE="${1:-swap}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/httpx-suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

VERSION="$("$PY" -c 'import httpx; print(httpx.__version__)')"
echo "httpx_suite: httpx $VERSION, mode=$MODE, package under test: $ROOT"

# The suite's own test tools (its requirements.txt), only if missing.
missing=()
for pair in uvicorn:uvicorn trio:trio trustme:trustme h2:h2 socksio:socksio zstandard:zstandard \
            chardet:chardet anyio:anyio; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "httpx_suite: installing ${missing[*]}"
    timeout 120 "$PY" -m pip install -q "${missing[@]}"
fi

if [ -n "${HTTPX_SDIST:-}" ]; then
    SDIST="$HTTPX_SDIST"
else
    timeout 60 "$PY" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "httpx==$VERSION" 2>"$WORK/pip.err" \
        || { cat "$WORK/pip.err" >&2; echo "httpx_suite: cannot download httpx $VERSION; set HTTPX_SDIST" >&2; exit 2; }
    SDIST="$(ls "$WORK"/httpx-*.tar.gz)"
fi
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/httpx-$VERSION"
[ -d "$SRC/tests" ] || { echo "httpx_suite: no tests/ in $SDIST" >&2; exit 2; }

cd "$SRC"
mapfile -t FILES < <(grep -rl "AsyncClient" tests | grep -v '^tests/client/test_client.py$' | sort)
PLUGIN=(-p httpx_swap)
[ "$MODE" = "none" ] && PLUGIN=()
# The package under test first on the path, then the swap plugin; the suite
# tests the installed httpx (its own httpx/ folder is removed from the copy).
rm -rf "$SRC/httpx"
set +e
env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
    PYTHONPATH="$ROOT:$HERE${PYTHONPATH:+:$PYTHONPATH}" \
    timeout 150 "$PY" -m pytest "${FILES[@]}" "${PLUGIN[@]}" -m "not network" -p no:cacheprovider -q -rfE \
    -W ignore::DeprecationWarning >"$WORK/out.txt" 2>&1
status=$?
[ "$status" -eq 124 ] && echo "httpx_suite: the tests were stopped after 150 s" >&2
grep -E '^(FAILED|ERROR) |^httpx_swap:|[0-9]+ (passed|failed)' "$WORK/out.txt" | head -100
set -e
exit "$status"
