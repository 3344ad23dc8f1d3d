"""`tests.dist`: the gloo harness of `r1_ds.local_ranks` under the name tests written against `tests.dist` import."""

from r1_ds.local_ranks import DistributedError, run_distributed, scaled_timeout

__all__ = ["DistributedError", "run_distributed", "scaled_timeout"]
