# Shared by scripts/up and scripts/test: make .venv once, reinstall only when
# pyproject.toml (or the extras asked for) changed since the last install.
set -euo pipefail

ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Chiffon needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$python" -m venv .venv
  fi
  local stamp=".venv/.chiffon-install-$extras"
  local want
  want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing Chiffon into .venv ($extras)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    if [ "$extras" = "runtime" ]; then
      .venv/bin/python -m pip install --quiet -e .
    else
      .venv/bin/python -m pip install --quiet -e ".[$extras]"
    fi
    echo "$want" > "$stamp"
  fi
}
