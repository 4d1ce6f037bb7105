#!/usr/bin/env bash
# What portable numerics (tools/runs.py PORTABLE: one AVX2 kernel path on every x86-64 CPU) cost: the same
# runs with them and with this CPU's native kernels, alternating, REPEATS times each, wall seconds per run.
#   bash drivers/numerics_cost.sh OUT_DIR     (REPEATS=3; SASRECLLM_DATA as for train.py; OUT_DIR/cost.md, logs in
#                                              OUT_DIR/numerics-logs.*/)
# Rows: a one-epoch SASRec run on ML-1M; with CHAIN=1, the main job's chain cut to one short epoch per stage.
set -euo pipefail
out=$(realpath -m -- "${1:?usage: bash drivers/numerics_cost.sh OUT_DIR}")  # the caller's, before the cd below
[ -z "${SASRECLLM_DATA:-}" ] || export SASRECLLM_DATA=$(realpath -m -- "$SASRECLLM_DATA")
repeats=${REPEATS:-3} chain=${CHAIN:-0}
if ! [[ $repeats =~ ^[1-9][0-9]{0,2}$ && $chain =~ ^[01]$ ]]; then
    echo "error: REPEATS=${repeats:0:40} CHAIN=${chain:0:40}: expected REPEATS 1..999 and CHAIN 0 or 1" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p -- "$out"
if [ -L "$out/cost.md" ] || { [ -e "$out/cost.md" ] && [ ! -f "$out/cost.md" ]; }; then
    echo "error: $out/cost.md is a link, a folder, a device or a FIFO; remove it" >&2
    exit 2
fi
scratch=$(mktemp -d "$out/numerics-runs.XXXXXX")  # its own: a runs/ of the caller's in OUT is never deleted
logs=$(mktemp -d "$out/numerics-logs.XXXXXX")  # kept; new, so no link or FIFO planted in OUT is written through
trap 'rm -rf -- "$scratch"' EXIT
cap=$(env -u ATEN_CPU_CAPABILITY python -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
native=(env ATEN_CPU_CAPABILITY="$cap" MKL_CBWR=AUTO ONEDNN_MAX_CPU_ISA=ALL)  # set: numerics() leaves them
jobs=("sasrec|--stage sasrec --data ml1m --max-epochs 1")  # CHAIN=1 adds the main job's chain, one short epoch each
[ "$chain" = 1 ] && jobs+=("chain|--stage all --data ml1m --llm tiny --max-epochs 1 --iters-per-epoch 100 --valid-rows 2000")
echo "| run | mode | seconds per run | mean |" >"$logs/cost.md"
echo "|---|---|---|---|" >>"$logs/cost.md"
for job in "${jobs[@]}"; do
  name=${job%%|*} flags=${job#*|}
  declare -A secs=([portable]="" [native]="")
  for k in $(seq "$repeats"); do
    for mode in portable native; do
      pre=(); [ "$mode" = native ] && pre=("${native[@]}")
      rm -rf -- "$scratch/runs"
      t0=$(date +%s.%N)
      # shellcheck disable=SC2086
      log=$logs/$name-$mode-$k.log
      where=(--out "$scratch/runs/$name") && [ "$name" != chain ] || where=()  # (--stage all: each under --runs)
      if ! "${pre[@]}" python train.py $flags --runs "$scratch/runs" "${where[@]}" >"$log" 2>&1; then
          echo "error: the $name run ($mode) failed; the end of $log:" >&2
          tail -3 "$log" >&2
          exit 2
      fi
      secs[$mode]+="$(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f') "
      head -1 "$log"
    done
  done
  for mode in portable native; do
    mean=$(echo "${secs[$mode]}" | awk '{s=0; for (i=1;i<=NF;i++) s+=$i; printf "%.1f", s/NF}')
    echo "| $name | $mode | ${secs[$mode]}| $mean |" >>"$logs/cost.md"
  done
done
mv -T -- "$logs/cost.md" "$out/cost.md"  # (a rename: it replaces the name, never writes through it)
cat "$out/cost.md"
