#!/usr/bin/env bash
# A short learning-rate sweep for one stage, chosen on valid AUC only: each LR trains one short epoch
# (--stop-after 1: no test scoring, so the test split cannot leak into the choice), then a table of
# the epoch's train loss and valid AUC / UAUC, best AUC first, goes to ROOT/sweep.md.
#
#   LRS="1e-4 3e-4 1e-3" bash drivers/lr_sweep.sh ROOT --stage text --llm DIR [train.py flags...]
#
# A finished LR (its log.jsonl) is skipped, so a killed sweep goes on where it stopped.
set -euo pipefail
root=${1:?usage: LRS="1e-4 3e-4" bash drivers/lr_sweep.sh ROOT --stage STAGE [train.py flags...]}
shift
py=${PYTHON:-python}
repo=$(cd "$(dirname "$0")/.." && pwd)  # train.py and the modules, from any directory (ROOT stays the caller's)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1  # (-m and -c: no module from the cwd)
set -f  # LRS is split on spaces, never globbed ("*" named the files here)
stage=
for ((i = 1; i <= $#; i++)); do  # the stage as train.py reads it, the last one winning
    case ${!i} in --stage=*) stage=${!i#--stage=} ;; --stage) j=$((i + 1)) && stage=${!j:-} ;; esac
done
if [[ " pop mc icl all " == *" $stage "* ]]; then  # (they train no epoch: they would score test)
    echo "error: --stage ${stage:0:40}: a sweep needs a stage that trains epochs (mf, ncf, gru4rec, sasrec, text, joint)" >&2
    exit 2
fi
lrs=(${LRS:?set LRS, e.g. LRS=\"1e-4 3e-4 1e-3\"})
if [[ $LRS == *[$'\n\t']* ]]; then  # (sweep.md quotes LRS in its command line: one line, spaces between)
    echo "error: LRS holds a newline or a tab; give the learning rates on one line, separated by spaces" >&2
    exit 2
fi
seen=" "
for lr in "${lrs[@]}"; do  # each is a directory's name: a number, never "../x"
    if ! [[ $lr =~ ^[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?$ ]]; then
        echo "error: LRS holds ${lr:0:40}; expected learning rates such as 1e-4 3e-4" >&2
        exit 2
    fi
    value=$(awk -v x="$lr" 'BEGIN { printf "%.17g", x + 0 }')  # (1e-3 and 0.001: one rate, two rows)
    if [[ $seen == *" $value "* ]]; then
        echo "error: LRS holds the learning rate $lr twice (spelled alike or not); give each once" >&2
        exit 2
    fi
    seen+="$value "
done
top= d=$root  # the folders mkdir -p makes, ROOT up to top: removed if a refused row leaves them empty
while [ ! -e "$d" ]; do top=$d d=$(dirname -- "$d"); done
[ -z "$top" ] || trap 'd=$root; while rmdir -- "$d" 2>/dev/null && [ "$d" != "$top" ]; do d=$(dirname -- "$d"); done' EXIT
mkdir -p -- "$root"
for lr in "${lrs[@]}"; do
    out=$root/lr$lr
    if [ -L "$out" ]; then  # train.py refuses a linked --out too; the sweep stops before it
        echo "error: $out is a symbolic link; refusing to write through it" >&2
        exit 2
    fi
    if [ -s "$out/log.jsonl" ]; then
        echo "[sweep] lr $lr: done before, skipped"
        continue
    fi
    echo "[sweep] lr $lr: $py train.py $* --lr $lr --stop-after 1 --out $out --overwrite"
    "$py" "$repo/train.py" "$@" --lr "$lr" --stop-after 1 --out "$out" --overwrite
done
"$py" -m drivers.report --sweep "$root" --command "LRS='$LRS' bash drivers/lr_sweep.sh $root $*"
