#!/usr/bin/env bash
# A short learning-rate sweep for one stage, chosen on valid AUC only: each LR trains one short epoch
# (--stop-after 1: no test scoring, so the test split cannot leak into the choice), then a table of
# the epoch's train loss and valid AUC / UAUC, best AUC first, goes to ROOT/sweep.md.
#
#   LRS="1e-4 3e-4 1e-3" bash tools/lr_sweep.sh ROOT --stage text --llm DIR [train.py flags...]
#
# A finished LR (its log.jsonl) is skipped, so a killed sweep goes on where it stopped.
set -euo pipefail
root=${1:?usage: LRS="1e-4 3e-4" bash tools/lr_sweep.sh ROOT --stage STAGE [train.py flags...]}
shift
py=${PYTHON:-python}
mkdir -p "$root"
for lr in ${LRS:?set LRS, e.g. LRS=\"1e-4 3e-4 1e-3\"}; do
    out=$root/lr$lr
    if [ -s "$out/log.jsonl" ]; then
        echo "[sweep] lr $lr: done before, skipped"
        continue
    fi
    echo "[sweep] lr $lr: $py train.py $* --lr $lr --stop-after 1 --out $out --overwrite"
    "$py" train.py "$@" --lr "$lr" --stop-after 1 --out "$out" --overwrite
done
"$py" - "$root" "LRS='$LRS' bash tools/lr_sweep.sh $root $*" <<'EOF'
import json, os, sys
root, command = sys.argv[1:]
rows = []
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "log.jsonl")
    if name.startswith("lr") and os.path.exists(path):
        e = json.loads(open(path).readline())
        rows.append((e["valid"]["auc"], name[2:], e["train_loss"], e["valid"]["uauc"], e["valid"]["n"], e["seconds"]))
lines = [f"`{command}`", "", "| lr | train loss | valid AUC | valid UAUC | valid rows | seconds |", "|---|---|---|---|---|---|"]
lines += [f"| {lr} | {loss:.4f} | {auc:.4f} | {uauc:.4f} | {n} | {s:.0f} |" for auc, lr, loss, uauc, n, s in sorted(rows, reverse=True)]
open(os.path.join(root, "sweep.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
