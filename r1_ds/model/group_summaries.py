"""Mean-pooled summaries of a history's complete paragraphs and document groups, kept beside the KV cache and
extended as decoding appends tokens, so that a decoding step pools only the groups that completed since the
last step instead of the whole history (routing, L2 and L3 read these summaries; see
hierarchical_attention_decode).

A summary of a complete group never changes: a token's key, query and value depend on the tokens before it only,
so appending tokens leaves every earlier group as it was. Each extension pools the new groups with the same
pool_groups call the whole-history pooling makes, so the summaries are the ones a step would pool from scratch.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from .hierarchical_attention import pool_groups, pooled_summaries


class GroupSummaries(NamedTuple):
    """pooled_summaries of a (B, T, d) history, all (B, n, d): qbar, kbar, vbar of the T // paragraph_size
    paragraphs (routing and L2; keys unrotated) and k3, v3 of the T // document_size document groups (L3).
    A tuple, as hierarchical_attention_decode takes it."""

    qbar: torch.Tensor
    kbar: torch.Tensor
    vbar: torch.Tensor
    k3: torch.Tensor
    v3: torch.Tensor

    def extended(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, paragraph_size: int, document_size: int):
        """The summaries of the longer history q, k, v (B, T', d) whose first groups these summarise: only the
        groups completed since are pooled."""
        g, G = paragraph_size, document_size

        def grow(old, x, size):
            n_old, n_new = old.shape[1], x.shape[1] // size
            if n_new == n_old:
                return old
            return torch.cat([old, pool_groups(x[:, n_old * size : n_new * size], size)], dim=1)

        return GroupSummaries(
            grow(self.qbar, q, g),
            grow(self.kbar, k, g),
            grow(self.vbar, v, g),
            grow(self.k3, k, G),
            grow(self.v3, v, G),
        )


class CachedSummaries:
    """The GroupSummaries and rotated keys of one layer of a growing KV cache. They are reused only while the
    cache layer still holds the very tensor they were made beside (a DynamicCache grows by concatenation, so each
    step leaves a new tensor there); a cache that was reordered (beam search), cropped, reset or filled elsewhere
    holds another one, and everything is computed afresh. No host synchronisation: the check compares Python
    objects. The rotated keys live in a buffer that grows by half when full (amortised: a step writes only its new
    rows; at most half the rotated keys again in spare rows)."""

    def __init__(self):
        self._keys = None  # weak reference to the cache layer's key tensor the state goes with
        self._tokens = 0
        self._k_rot: torch.Tensor | None = None  # (B, capacity, d); rows < _tokens hold the rotated keys
        self.summaries: GroupSummaries | None = None

    def valid_for(self, keys: torch.Tensor | None, tokens: int) -> bool:
        """keys: the layer's key tensor before this step's update; tokens: the history length it holds."""
        return (
            self.summaries is not None
            and self._keys is not None
            and self._keys() is keys
            and self._tokens == tokens
            and not (self._k_rot.is_inference() and not torch.is_inference_mode_enabled())
        )

    def update(
        self, q, k, v, keys_after: torch.Tensor, rotate, *, valid: bool, paragraph_size: int, document_size: int
    ):
        """(summaries, rotated keys (B, T, d)) of history q, k, v (B, T, d), extended from the last ones when
        `valid`, else computed whole; `rotate(x, start)` rotates keys x (B, n, d) at positions start .. start + n
        - 1. Remembers `keys_after` (the layer's key tensor after this step's update)."""
        kw = dict(paragraph_size=paragraph_size, document_size=document_size)
        B, T, d = k.shape
        start = self._tokens if valid else 0
        if valid:
            self.summaries = self.summaries.extended(q, k, v, **kw)
        else:
            self.summaries = GroupSummaries(*pooled_summaries(q, k, v, **kw))
            self._k_rot = None
        if self._k_rot is None or self._k_rot.shape[1] < T:
            grown = k.new_empty(B, max(256, T + T // 2), d)
            if self._k_rot is not None:
                grown[:, :start] = self._k_rot[:, :start]
            self._k_rot = grown
        self._k_rot[:, start:T] = rotate(k[:, start:T], start)
        self._keys, self._tokens = weakref.ref(keys_after), T
        return self.summaries, self._k_rot[:, :T]


def layer_summaries(cache, layer_idx: int) -> CachedSummaries:
    """The CachedSummaries of `layer_idx`, kept on the cache object (created on first use)."""
    store = cache.__dict__.setdefault("r1_group_summaries", {})
    return store.setdefault(layer_idx, CachedSummaries())


def cache_layer_keys(cache, layer_idx: int) -> torch.Tensor | None:
    """The key tensor a DynamicCache-style cache holds for `layer_idx`, or None (another cache type: no reuse)."""
    layers = getattr(cache, "layers", None)
    if layers is None or layer_idx >= len(layers):
        return None
    keys = getattr(layers[layer_idx], "keys", None)
    return keys if isinstance(keys, torch.Tensor) else None
