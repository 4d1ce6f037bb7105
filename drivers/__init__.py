"""Drivers that call the lesson: what makes the README's figures, not what a learner needs to read.

report.py (the paper's tables and figures, the README's generated blocks), table.sh (trains a table's
rows, seed by seed), lr_sweep.sh (a learning-rate sweep on valid), bench.py (throughput against HF +
peft), datainfo.py (data statistics), decode.py (greedy decoding with a checkpoint), numerics_cost.sh
(what portable numerics cost). They import the lesson files and tools/; neither imports them.
"""
