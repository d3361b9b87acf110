#!/usr/bin/env bash
# Build the separate virtualenv that holds the peer image-subtraction
# packages the benchmark compares AstrID against (see README.md here).
#
#   bash benchmarks/peers/setup_peers.sh            # creates <repo>/.venv-peers
#   PEERS_VENV=/some/where bash benchmarks/peers/setup_peers.sh
#
# Idempotent and non-interactive.  Each peer is installed on its own; one
# that fails is reported and skipped, never fatal.  The script exits 0 unless
# the virtualenv itself cannot be created.  The last lines it prints are a
# summary, one "PEER <name> OK <version>" or "PEER <name> FAIL <reason>" each.
#
# Why the pins:
#  * numpy<2: zogyp 1.6.3 calls ndarray.newbyteorder(), removed in numpy 2.
#    properimage 0.7.2 and sfft 1.7.3 both run on numpy 1.26 as well.
#  * setuptools<81 + --no-build-isolation for tinynpydb (a dependency of
#    properimage): its setup.py bootstraps setuptools through ez_setup,
#    which tries to download setuptools unless pkg_resources is importable.
#  * source-extractor and psfex (Debian packages) are needed by zogyp
#    (PSF modelling) and by sfft's automatic source selection; both call the
#    binary as `sex` or `sextractor`, which Debian names `source-extractor`,
#    so the venv's bin/ gets `sex` and `sextractor` links to it.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${PEERS_VENV:-$REPO/.venv-peers}"
PY="${PEERS_PYTHON:-python3.11}"

NUMPY_PIN="numpy==1.26.4"
# Versions tested together (2026-11-24).  Pinned so that a later release of
# any of them cannot silently change the benchmark.
COMMON_PINS=(
  "$NUMPY_PIN" "scipy==1.17.1" "astropy==7.2.3" "matplotlib==3.11.2"
  "sep==1.4.1" "pyFFTW==0.15.1"
)
PROPERIMAGE_PINS=("properimage==0.7.2" "tinynpydb==0.1.2" "astroscrappy==1.3.0"
                  "astroalign==2.6.2" "scikit-image==0.26.0" "joblib==1.6.0")
SFFT_PINS=("sfft==1.7.3" "numba==0.68.1" "llvmlite==0.50.0"
           "fastremap==1.21.0")
ZOGYP_PINS=("zogyp==1.6.3")

log() { printf '[setup_peers] %s\n' "$*" >&2; }
declare -A RESULT

# properimage makes a temporary directory when imported; keep the import
# checks below from leaving those behind.
CHECK_TMP="$(mktemp -d)"
trap 'rm -rf "$CHECK_TMP"' EXIT
export TMPDIR="$CHECK_TMP"

# --- 1. the virtualenv ------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PY" >/dev/null 2>&1 || { log "no $PY on PATH"; exit 1; }
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV" || { log "venv creation failed"; exit 1; }
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)
export PIP_NO_INPUT=1

# A constraints file keeps every install step on the same versions.
CONSTRAINTS="$VENV/peers-constraints.txt"
printf '%s\n' "${COMMON_PINS[@]}" "${PROPERIMAGE_PINS[@]}" "${SFFT_PINS[@]}" \
  "${ZOGYP_PINS[@]}" "setuptools<81" > "$CONSTRAINTS"

log "base packages"
"${PIP[@]}" install -c "$CONSTRAINTS" "setuptools<81" wheel "Cython>=3" \
  "${COMMON_PINS[@]}" 2>&1 | grep -v '^WARNING' >&2
if ! "$VPY" -c "import numpy, scipy, astropy, sep" 2>/dev/null; then
  log "base packages failed to install; no peer can run"
  for p in properimage sfft zogyp pyzogy; do RESULT[$p]="FAIL base packages"; done
fi

# --- 2. external binaries (SExtractor, PSFEx) -------------------------------
have_sex() { command -v source-extractor >/dev/null 2>&1 \
  || command -v sex >/dev/null 2>&1 || command -v sextractor >/dev/null 2>&1; }
if ! have_sex || ! command -v psfex >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "apt-get install source-extractor psfex"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q source-extractor psfex \
      || { apt-get update -q && apt-get install -y -q source-extractor psfex; }
    } >/dev/null 2>&1 || log "apt-get install of source-extractor/psfex failed"
  else
    log "SExtractor/PSFEx missing and apt-get unavailable (need root):" \
        "sfft and zogyp will not run"
  fi
fi
SEX_BIN="$(command -v source-extractor || command -v sextractor || command -v sex || true)"
if [ -n "$SEX_BIN" ]; then
  for name in sex sextractor; do
    if [ ! -e "$VENV/bin/$name" ]; then ln -sf "$SEX_BIN" "$VENV/bin/$name"; fi
  done
fi

# --- 3. the peers, one at a time ---------------------------------------------
install_peer() {  # name, import-name, pip args...
  local name="$1" mod="$2"; shift 2
  if [ -n "${RESULT[$name]:-}" ]; then return; fi
  log "installing $name"
  local out
  if out="$("${PIP[@]}" install -c "$CONSTRAINTS" "$@" 2>&1)"; then
    if "$VPY" -c "import $mod" >/dev/null 2>&1; then
      RESULT[$name]="OK $("$VPY" -c "import importlib.metadata as m; print(m.version('$name'))")"
    else
      RESULT[$name]="FAIL import $mod: $("$VPY" -c "import $mod" 2>&1 | tail -1)"
    fi
  else
    RESULT[$name]="FAIL pip: $(printf '%s\n' "$out" | grep -E 'ERROR|error:' | grep -v '^WARNING' | tail -1)"
  fi
}

# tinynpydb must be built without isolation (see header).
if [ -z "${RESULT[properimage]:-}" ]; then
  "${PIP[@]}" install -c "$CONSTRAINTS" --no-build-isolation "tinynpydb==0.1.2" \
    >/dev/null 2>&1 || log "tinynpydb failed (properimage will fail too)"
fi
install_peer properimage properimage "${PROPERIMAGE_PINS[@]}"
install_peer sfft sfft "${SFFT_PINS[@]}"
# zogyp runs `sextractor` at import time; give it the venv's links.
PATH="$VENV/bin:$PATH" install_peer zogyp zogyp "${ZOGYP_PINS[@]}"
if [ -z "${RESULT[zogyp]:-}" ] || [[ "${RESULT[zogyp]}" == OK* ]]; then
  if ! command -v psfex >/dev/null 2>&1 || [ -z "$SEX_BIN" ]; then
    RESULT[zogyp]="${RESULT[zogyp]:-OK} (but SExtractor/PSFEx binaries missing: will not run)"
  fi
fi
if [ -z "$SEX_BIN" ] && [[ "${RESULT[sfft]:-}" == OK* ]]; then
  RESULT[sfft]="${RESULT[sfft]} (but SExtractor missing: will not run)"
fi
# PyZOGY has never been released on PyPI (only on GitHub); try anyway so the
# summary says so if that ever changes.
if [ -z "${RESULT[pyzogy]:-}" ]; then
  if out="$("${PIP[@]}" install -c "$CONSTRAINTS" PyZOGY 2>&1)"; then
    RESULT[pyzogy]="OK $("$VPY" -c "import importlib.metadata as m; print(m.version('PyZOGY'))" 2>/dev/null)"
  else
    RESULT[pyzogy]="FAIL pip: $(printf '%s\n' "$out" | grep -E '^ERROR' | tail -1)"
  fi
fi

# --- 4. summary ----------------------------------------------------------------
for p in properimage sfft zogyp pyzogy; do
  printf 'PEER %s %s\n' "$p" "${RESULT[$p]:-FAIL unknown}"
done
exit 0
