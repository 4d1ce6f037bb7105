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
"$py" - "$root" "LRS='$LRS' bash drivers/lr_sweep.sh $root $*" <<'EOF'
import os, sys
from drivers.report import md_table, read_log
root, command = sys.argv[1:]
logs = {name[2:]: read_log(os.path.join(root, name)) for name in os.listdir(root) if name.startswith("lr")}
rows = sorted(((log[0]["valid"]["auc"], lr, log[0]) for lr, log in logs.items() if log), reverse=True)  # best first
table = md_table(["lr", "train loss", "valid AUC", "valid UAUC", "valid rows", "seconds"],
                 [[lr, f"{e['train_loss']:.4f}", f"{auc:.4f}", f"{e['valid']['uauc']:.4f}", str(e["valid"]["n"]),
                   f"{e['seconds']:.0f}"] for auc, lr, e in rows])
text = f"`{command}`\n\n{table}\n"
open(os.path.join(root, "sweep.md"), "w").write(text)
print(text, end="")
EOF
