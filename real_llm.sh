#!/usr/bin/env bash
# The README's real-LLM experiment on ML-1M: Pop and SASRec (CF), then ICL (the untuned LLM),
# TALLRec (the text stage) and SASRecLLM (the joint stage) on a real pretrained LLM, the
# --shuffle-cf ablation, extra joint seeds, and one table per part (test, warm, cold).
#
#   bash real_llm.sh checkpoints/SmolLM2-135M-Instruct runs/smollm2            # on a GPU
#   LLM_FLAGS="--max-minutes 20 ..." DEVICE=cpu bash real_llm.sh DIR RUNS        # a reduced CPU run
#
# DEVICE (default cuda) runs every stage; LLM_FLAGS go to the LLM stages only (default: bf16
# weights and autocast, 16-aligned batch lengths, and a 1.5-minute budget per training stage, so
# that the whole script fits in about 13 minutes on one H200, by the stage times the README
# reports); CF_FLAGS go to Pop and SASRec only;
# SEEDS (default "1 2") are the extra seeds of the joint stage. Every stage's wall time goes to
# RUNS/times.tsv, the tables to RUNS/table_*.md.
set -euo pipefail
llm=$1
runs=$2
device=${DEVICE:-cuda}
py=${PYTHON:-python}
llm_flags=${LLM_FLAGS:-"--dtype bfloat16 --amp bf16 --pad-multiple 16 --eval-batch-size 128 --max-minutes 1.5"}
cf_flags=${CF_FLAGS:-}
seeds=${SEEDS:-"1 2"}
mkdir -p "$runs"

stage() {  # stage NAME OUT [flags...]: run one train.py stage, time it
    local name=$1 out=$2
    shift 2
    local t0=$SECONDS
    "$py" train.py --stage "$name" --data ml1m --device "$device" --runs "$runs" --out "$out" "$@"
    printf '%s\t%s\t%d\n' "$name" "$out" $((SECONDS - t0)) >>"$runs/times.tsv"
}

# shellcheck disable=SC2086  # the *_flags are lists of flags
stage pop "$runs/pop" $cf_flags
# shellcheck disable=SC2086
stage sasrec "$runs/sasrec" $cf_flags
# shellcheck disable=SC2086
stage icl "$runs/icl" --llm "$llm" $llm_flags
# shellcheck disable=SC2086
stage text "$runs/text" --llm "$llm" $llm_flags
# shellcheck disable=SC2086
stage joint "$runs/joint" --llm "$llm" $llm_flags
"$py" eval.py "$runs/joint" --shuffle-cf --repeats 3 | tee "$runs/shuffle_cf.md"
for part in test test_warm test_cold; do
    "$py" eval.py --table "$runs"/{pop,sasrec,icl,text,joint} --part "$part" | tee "$runs/table_$part.md"
done
for s in $seeds; do
    # shellcheck disable=SC2086
    stage joint "$runs/joint_s$s" --llm "$llm" $llm_flags --seed "$s"
done
if [ -n "$seeds" ]; then
    "$py" eval.py --seeds "$runs/joint" $(for s in $seeds; do echo "$runs/joint_s$s"; done) | tee "$runs/seeds_joint.md"
fi
cat "$runs/times.tsv"
