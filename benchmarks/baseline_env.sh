#!/usr/bin/env bash
# An interpreter whose rnnpolicy is another commit of this repository, for serve_bench.py --baseline:
#   bash benchmarks/baseline_env.sh COMMIT DIR    ->  DIR/venv/bin/python
# DIR/tree is a git worktree at COMMIT; DIR/venv a venv with that tree installed (editable, no dependencies)
# that borrows the packages of this repository's .venv (make setup) through a .pth file.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: bash benchmarks/baseline_env.sh COMMIT DIR (got $# arguments)" >&2
    exit 2
fi
commit=$1 dir=$2
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
deps=$(ls -d "$repo"/.venv/lib/python3*/site-packages 2>/dev/null | head -1)
if [ -z "$deps" ]; then
    echo "no $repo/.venv: run make setup first (the baseline borrows its packages)" >&2
    exit 1
fi
mkdir -p "$dir"
[ -d "$dir/tree" ] || git -C "$repo" worktree add --detach "$dir/tree" "$commit"
[ -x "$dir/venv/bin/python" ] || python3 -m venv "$dir/venv"
site=$("$dir/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$deps" > "$site/rnnpolicy-baseline-deps.pth"
"$dir/venv/bin/python" -m pip install --quiet --no-deps -e "$dir/tree"
"$dir/venv/bin/python" -c "import rnnpolicy.serve; print('baseline:', rnnpolicy.serve.__file__)"
