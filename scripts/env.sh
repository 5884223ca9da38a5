# Sourced by the other scripts: create .venv if missing, install the pinned requirements
# under requirements.lock (every transitive dependency at the version the committed run used)
# once (re-run only when requirements.txt, requirements.lock or pyproject.toml change), then
# activate it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
# One Python version everywhere (pyproject.toml, requirements.lock, CI, mypy): 3.11.
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: AssureXRay needs Python 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo ">> creating virtual environment .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.assurexray-installed
want=$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo ">> installing pinned requirements into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
