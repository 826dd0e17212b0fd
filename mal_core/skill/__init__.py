"""Agent-facing orchestration: policy and route, job folders, parent checkpoints, spec mappings, data sources, HPO.

Everything here imports torch / ray lazily so ``runners/<action>.py --dry-run`` stays fast.
"""
