"""Held-out loss inside `r1-ds train`: plain next-token cross entropy (no label smoothing) of the
DeepSpeed engine on the first sequences of a held-out packed shard folder, with or without a pipeline.
Every rank evaluates the same rows (the set is small), so the number is the same on all of them."""

from __future__ import annotations

import numpy as np
import torch

from r1_ds.data import batch_iterator


def _plain_loss_fn(module):
    """The training loss function without label smoothing: vocabulary-parallel where a head is
    sharded (its logits are), next-token cross entropy otherwise (also a pipeline's tied head)."""
    from r1_ds.parallel.tensor_parallel import VocabParallelLMHead, tensor_parallel_loss_fn

    head = next((m for m in module.modules() if isinstance(m, VocabParallelLMHead)), None)
    return tensor_parallel_loss_fn(head, 0.0)


def engine_heldout_loss(engine, dataset, *, seq_len: int, sequences: int, pipeline: bool) -> float:
    """Mean held-out loss per token over whole micro-batches of the first `sequences` rows."""
    micro = engine.train_micro_batch_size_per_gpu()
    n_micro = max(1, min(sequences, len(dataset)) // micro)
    micro_indices = [np.arange(m * micro, (m + 1) * micro) for m in range(n_micro)]
    module = engine.module
    plain = _plain_loss_fn(module)
    if pipeline:
        from r1_ds.parallel.deepspeed_patches import pipeline_loss_fn

        with pipeline_loss_fn(module, plain):  # eval_batch averages over micro-batches and data ranks, to every stage
            loss = engine.eval_batch(batch_iterator(dataset, micro_indices, seq_len), num_micro_batches=n_micro)
        return float(loss)
    was_training = module.training
    module.eval()
    losses = []
    with torch.no_grad():
        for x, _ in batch_iterator(dataset, micro_indices, seq_len):
            x = x.to(engine.device)
            losses.append(float(plain(module(input_ids=x, use_cache=False).logits, x)))
    module.train(was_training)
    return float(np.mean(losses))
