"""The unbiased pass@k estimator of Chen et al. 2021 (Codex), per problem and averaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of the n samples, drawn without replacement, hold at
    least one of the c correct ones. Computed as a product, so large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def reportable_ks(n: int, ks: Sequence[int] = (1, 10, 100)) -> list[int]:
    """The k of `ks` that n samples per problem allow (pass@k is undefined for k > n)."""
    return [k for k in ks if k <= n]


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int] = (1, 10, 100)) -> dict[str, float]:
    """{"pass@k": mean over problems} from (n, c) per problem, for the k every problem's n allows."""
    if not counts:
        raise ValueError("pass@k of zero problems is undefined")
    n_min = min(n for n, _ in counts)
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in reportable_ks(n_min, ks)}
