#!/usr/bin/env bash
# The one table driver: train every row of the paper's Table 1 (or 2) for each seed under ROOT, lay
# them out (ROOT.md by drivers.report --table) and, with the joint row, run the --shuffle-cf ablation
# on seed 0's joint run (ROOT/shuffle_cf.md).
#
#   bash drivers/table.sh ROOT [train.py flags for every row...]
#   SEEDS=3 bash drivers/table.sh runs/table_ml1m                        # Table 1, tiny backbone
#   ROWS="pop sasrec icl text joint" LLM=checkpoints/SmolLM2-135M-Instruct \
#       LLM_FLAGS="--dtype bfloat16 --amp bf16" bash drivers/table.sh runs/smollm2   # a real LLM
#
# Environment: DATA (ml1m), SEEDS (1: seed 0 only), ROWS (all nine, in Table 1's order), LLM (tiny),
# DEVICE (cpu), LLM_FLAGS (the LLM rows only), CF_FLAGS (the trained CF rows: mf ncf gru4rec sasrec), <STAGE>_FLAGS (that
# stage's rows only, e.g. TEXT_FLAGS="--lr 1e-3"), SHUFFLE_FLAGS (eval.py's, for the --shuffle-cf step,
# e.g. "--test-only --dtype float32" for a bf16 run on a CPU without native bf16), MINUTES (a session's
# budget: the rows pause, resumably, before an epoch that would end after it; run the same command again
# to go on), PYTHON (python). A bf16 LLM row (--dtype bfloat16 or --amp bf16, or a last.pt of either) is neither
# started nor resumed on a CPU without native bf16 (exit 3): its seeds would mix precisions or kernels.
# A finished row (metrics.json) is skipped, one a kill or a pause left with a last.pt resumes, one with
# other files starts over (--overwrite moves them aside). Row wall times are appended to ROOT/times.tsv.
set -euo pipefail
set -f  # ROWS and the *_FLAGS are split on spaces, never globbed (ROWS='m?' ran the row a file "mc" named)
root=${1:?usage: bash drivers/table.sh ROOT [train.py flags...]}
shift
all_rows="pop mf ncf gru4rec mc sasrec icl text joint"  # Table 1's rows, in its order
words=("$@")  # what reaches train.py beside the flags set here: the arguments and every *_FLAGS
for name in SHUFFLE LLM CF ${all_rows^^}; do
    name=${name}_FLAGS
    if [[ ${!name:-} == *$'\n'* ]]; then  # (read -ra stops at the first newline: the flags after it were dropped)
        echo "error: $name holds a newline; give its flags on one line, separated by spaces" >&2
        exit 2
    fi
    [ "$name" = SHUFFLE_FLAGS ] && continue  # (eval.py's flags, checked by eval.py)
    read -ra more <<<"${!name:-}"
    words+=("${more[@]}")
done
for flag in "${words[@]}"; do  # (train.py takes no abbreviation: --see is no --seed)
    case ${flag%%=*} in
        --stage | --data | --seed | --out | --runs | --cf-ckpt | --lora | --resume | --overwrite | --device | --llm)
            echo "error: drivers/table.sh sets ${flag%%=*} for every row itself (DATA, SEEDS, DEVICE and LLM set" \
                "the data, the seeds, the device and the LLM); remove it from the arguments and the *_FLAGS" >&2
            exit 2 ;;
    esac
done
py=${PYTHON:-python}
repo=$(cd "$(dirname "$0")/.." && pwd)  # train.py and the modules, from any directory (ROOT stays the caller's)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1  # (-m and -c: no module from the cwd)
rows=${ROWS:-$all_rows}
# SEEDS and ROWS reach bash arithmetic and indirect expansion, which run a $(command) inside them: checked first.
if ! [[ ${SEEDS:-1} =~ ^[1-9][0-9]{0,2}$ ]]; then
    echo "error: SEEDS=${SEEDS:0:40}: expected a number of seeds, 1..999" >&2
    exit 2
fi
if [ -n "${MINUTES:-}" ] && ! [[ $MINUTES =~ ^[0-9]{1,6}(\.[0-9]{1,4})?$ && $MINUTES =~ [1-9] ]]; then
    echo "error: MINUTES=${MINUTES:0:40}: expected a number of minutes > 0, such as 130 or 2.5" >&2
    exit 2
fi
for stage in $rows; do
    if [[ " $all_rows " != *" $stage "* ]]; then
        echo "error: ROWS holds ${stage:0:40}; expected some of: $all_rows" >&2
        exit 2
    fi
done
for name in ROWS DATA LLM DEVICE SEEDS MINUTES PYTHON; do  # set but empty: no default meant
    if [ "${!name+set}" = set ] && [ -z "${!name}" ]; then
        echo "error: $name is set but empty; give it a value, or unset it for its default" >&2
        exit 2
    fi
done
for name in LLM CF SHUFFLE ${all_rows^^}; do  # flags no row of ROWS would read: refused, not ignored
    case $name in LLM) want="icl text joint" ;; CF) want="mf ncf gru4rec sasrec" ;; SHUFFLE) want=joint ;;
        *) want=${name,,} ;; esac
    var=${name}_FLAGS hit=
    for w in $want; do [[ " $rows " == *" $w "* ]] && hit=1; done
    if [ -n "${!var:-}" ] && [ -z "$hit" ]; then
        echo "error: $var is set, but ROWS ($rows) holds none of the rows it is for ($want)" >&2
        exit 2
    fi
done
top= d=$root  # the folders mkdir -p makes, ROOT up to top: removed if a refused row leaves them empty
while [ ! -e "$d" ]; do top=$d d=$(dirname -- "$d"); done
[ -z "$top" ] || trap 'd=$root; while rmdir -- "$d" 2>/dev/null && [ "$d" != "$top" ]; do d=$(dirname -- "$d"); done' EXIT
mkdir -p -- "$root"
no_link() {  # nothing is written through a link planted in ROOT: it could point anywhere
    for path; do
        if [ -L "$path" ]; then
            echo "error: $path is a symbolic link; refusing to write through it" >&2
            exit 2
        fi
    done
}
no_link "$root/times.tsv" "$root/commands.txt" "$root/shuffle_cf.md.tmp" "$root/shuffle_cf.md"
# and no FIFO (it hung the table), device or huge file (3 MB of commands.txt: one argument too long) there
for path in "$root/times.tsv" "$root/commands.txt" "$root/shuffle_cf.md.tmp" "$root/shuffle_cf.md"; do
    if [ -e "$path" ] && { [ ! -f "$path" ] || [ "$(stat -c %s -- "$path")" -gt 1048576 ]; }; then
        echo "error: $path is not a regular file of at most 1 MiB; remove it" >&2
        exit 2
    fi
done
for ((s = 0; s < ${SEEDS:-1}; s++)); do
    for stage in $rows; do
        out=$root/seed$s/$stage
        no_link "$root/seed$s" "$out"
        if [ -f "$out/metrics.json" ]; then
            echo "[table] $stage, seed $s: done before, skipped"
            continue
        fi
        flags=(--stage "$stage" --data "${DATA:-ml1m}" --seed "$s" --out "$out" --runs "$root" --device "${DEVICE:-cpu}")
        case $stage in
            icl | text | joint) read -ra extra <<<"${LLM_FLAGS:-}"; flags+=(--llm "${LLM:-tiny}") ;;
            pop | mc) extra=() ;;  # (fitted in closed form: no CF_FLAGS flag is theirs, and train.py refuses one)
            *) read -ra extra <<<"${CF_FLAGS:-}" ;;
        esac
        stage_flags=${stage^^}_FLAGS
        read -ra own <<<"${!stage_flags:-}"
        flags+=("${extra[@]}" "${own[@]}" "$@")
        if [ -n "${MINUTES:-}" ]; then
            if ! left=$(awk -v m="$MINUTES" -v s="$SECONDS" 'BEGIN { l = m - s / 60; printf "%.4f", l; exit !(l > 0) }'); then
                echo "[table] MINUTES=$MINUTES spent before $stage, seed $s: run the same command again to go on"
                exit 0
            fi
            flags+=(--pause-minutes "$left")
        fi
        bf16=0
        if [ "${DEVICE:-cpu}" = cpu ] && [[ " icl text joint " == *" $stage "* ]] &&
            { [ -f "$out/last.pt" ] || [[ "${flags[*]}" == *bf* ]]; }; then "$py" -c '
import contextlib, io, sys, train, tools.runs as r
try:  # the flags as train.py reads them (the last one winning); bad ones: train.py says so
    with contextlib.redirect_stderr(io.StringIO()):
        asked = vars(train.parse_args(sys.argv[2:]))
except (SystemExit, ValueError):
    asked = {}
bf16 = any(d.get("dtype") == "bfloat16" or d.get("amp") == "bf16" for d in (asked, r.peek_args(sys.argv[1])))
sys.exit(3 if bf16 and not r.native_bf16() else 0)' "$out/last.pt" "${flags[@]}" || bf16=$?
        fi
        if [ "$bf16" != 0 ] && [ "$bf16" != 3 ]; then  # (a traceback is no answer about bf16)
            echo "error: the bf16 check of $stage, seed $s failed (exit $bf16)" >&2
            exit 2
        elif [ "$bf16" = 3 ]; then
            echo "[table] $stage, seed $s: a bf16 row, and this CPU has no native bf16 (emulated: many times slower," \
                "other kernels than the row's own); run the same command on a CPU with AMX or avx512_bf16" >&2
            exit 3
        fi
        [ "$stage" != joint ] || flags+=(--cf-ckpt "$root/seed$s/sasrec/best.pt" --lora "$root/seed$s/text/adapter")
        how=started
        if [ -f "$out/last.pt" ]; then
            flags+=(--resume) how=resumed  # a resumed row's times add up (report.row_seconds)
        elif [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
            flags+=(--overwrite)
        fi
        echo "[table] $stage, seed $s: $py train.py ${flags[*]}"
        t0=$SECONDS
        "$py" "$repo/train.py" "${flags[@]}"
        printf 'seed%s/%s\t%d\t%s\n' "$s" "$stage" $((SECONDS - t0)) "$how" >>"$root/times.tsv"
        if [ ! -f "$out/metrics.json" ]; then
            echo "[table] $stage, seed $s: not finished (paused or stopped); run the same command again to go on"
            exit 0
        fi
    done
done
command="${DATA:+DATA=$DATA }SEEDS=${SEEDS:-1} ROWS='$rows' LLM=${LLM:-tiny} DEVICE=${DEVICE:-cpu} LLM_FLAGS='${LLM_FLAGS:-}' CF_FLAGS='${CF_FLAGS:-}'"
for stage in $rows; do v=${stage^^}_FLAGS && [ -z "${!v:-}" ] || command+=" $v='${!v}'"; done
command+=" bash drivers/table.sh $root $*"
# Every call that trained rows here, in order (seed 0 of every row, then more seeds of a few, say): the table's recipe.
grep -qxF -- "$command" "$root/commands.txt" 2>/dev/null || printf '%s\n' "$command" >>"$root/commands.txt"
paper=() && [ "${DATA:-ml1m}" != ml1m ] || paper=(--paper ml1m)  # (the paper's figures are ML-1M's only)
"$py" -m drivers.report --table "$root" --command "$(cat "$root/commands.txt")" "${paper[@]}"
if [[ " $rows " == *" joint "* ]] && [ ! -f "$root/shuffle_cf.md" ]; then
    read -ra shuffle <<<"${SHUFFLE_FLAGS:-}"
    "$py" "$repo/eval.py" "$root/seed0/joint" --shuffle-cf --device "${DEVICE:-cpu}" "${shuffle[@]}" >"$root/shuffle_cf.md.tmp"
    mv "$root/shuffle_cf.md.tmp" "$root/shuffle_cf.md"
    cat "$root/shuffle_cf.md"
fi
