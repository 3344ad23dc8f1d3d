"""Parallelism applied from outside the model: topology (pipe x tensor x data), pipeline cut,
tensor-parallel wiring and compressed gradient reduction. Submodules import DeepSpeed lazily."""
