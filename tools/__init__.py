"""Machinery beside the lesson: what SASRecLLM's files lean on but a learner can skip.

runs.py (run directories, checkpoint files, error lines, numerics), limits.py (sizes before memory),
dist.py (torchrun), sources.py (data files and the raw-ratings recipe), backbones.py (random
checkpoints), report.py and svg.py (the paper's tables and figures, the README's generated blocks),
datainfo.py (data statistics), bench.py (throughput against HF + peft), table.sh (the table driver),
numerics_cost.sh (what portable numerics cost).
"""
