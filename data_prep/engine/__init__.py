"""The scale-out engine: the text filters as datatrove pipeline steps, run by datatrove's local, Slurm or Ray
executor over contiguous ranges of the input files, with dedup across all tasks (docs/data_at_scale.md).
"""
