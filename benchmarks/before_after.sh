#!/bin/bash
# Before/after speed and bitwise equality of bench_dynamics.py between commits, on one machine.
#
#   bash benchmarks/before_after.sh OUT_DIR COMMIT [COMMIT ...]
#
# Each commit gets a detached worktree under OUT_DIR; the current checkout runs as "HEAD". The runs go
# in two rounds, the second in reverse order, so that the host's drift does not favour one side. Each
# run writes OUT_DIR/<round>-<name>.json (times) and .npz (raw results); compare the raw results with
#   python benchmarks/compare_dumps.py OUT_DIR/r1-<commit>.npz OUT_DIR/r1-HEAD.npz
#
# Why the symlinks: with an editable install, `stopgrad.dynamics` (and analysis, ssl_models, figures)
# resolve through the installed path map to the *installed* checkout, whatever PYTHONPATH says, unless
# the worktree's own `stopgrad/` package holds them. Each worktree gets stopgrad/<package> -> ../<package>,
# and every run prints the file its `stopgrad.dynamics` came from. A warm-up run per commit compiles its
# numba kernels (cached) before the timed rounds.
set -euo pipefail
out=$(realpath -m "$1"); shift
here=$(git rev-parse --show-toplevel)
python=${PYTHON:-python}
flags=${BENCH_FLAGS:---configs 4096 --loop-sample 4 --no-equal-accuracy --rtol 1e-7}
mkdir -p "$out"
names=()
for commit in "$@"; do
  wt="$out/wt-$commit"
  [ -d "$wt" ] || git -C "$here" worktree add -f --detach "$wt" "$commit" >/dev/null
  for p in dynamics analysis ssl_models figures; do ln -sfn "../$p" "$wt/stopgrad/$p"; done
  names+=("$commit")
done
names+=("HEAD")
run() {  # round name
  local dir=$here; [ "$2" != HEAD ] && dir="$out/wt-$2"
  echo "== round $1: $2 ($(git -C "$dir" rev-parse --short HEAD)) load $(cut -d' ' -f1 /proc/loadavg) $(date +%T)"
  (cd "$dir" && PYTHONPATH="$dir" "$python" -c "import stopgrad.dynamics as d; print('   code:', d.__file__)")
  # shellcheck disable=SC2086
  (cd "$dir" && PYTHONPATH="$dir" "$python" benchmarks/bench_dynamics.py $flags --out "$out/$1-$2.json" \
     --dump "$out/$1-$2.npz" | tail -8)
}
for name in "${names[@]}"; do  # compile and cache each commit's numba kernels outside the timed runs
  dir=$here; [ "$name" != HEAD ] && dir="$out/wt-$name"
  (cd "$dir" && PYTHONPATH="$dir" "$python" benchmarks/bench_dynamics.py --configs 8 --loop-sample 1 \
     --no-equal-accuracy --grid-side 20 --out "$out/warm-$name.json" >/dev/null)
done
for name in "${names[@]}"; do run r1 "$name"; done
for ((i = ${#names[@]} - 1; i >= 0; i--)); do run r2 "${names[$i]}"; done
