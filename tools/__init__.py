"""Machinery beside the lesson: what SASRecLLM's files lean on but a learner can skip. It imports no
lesson file; the drivers that call the lesson (bench, report, table.sh...) are in drivers/.

runs.py (run directories, checkpoint files, error lines, numerics), limits.py (sizes before memory),
dist.py (torchrun), sources.py (data files and the raw-ratings recipe), backbones.py (random
checkpoints in HF's layout), tables.py (Table 1's layout, a run's metrics read back), svg.py (charts).
"""
