"""Alignment training under DeepSpeed: `r1-ds train` with `align.objective` "align" or "lm+align".

    settings check (data parallel only) -> distributed start-up and DeepSpeed JSON as for the LM -> triples
    (rows dropped by reason, images embedded once by the frozen tower, cached) -> R1 + AlignHeads in one
    module -> deepspeed.initialize -> resume -> loop: micro-steps of InfoNCE over the pairs (negatives gathered
    over the data-parallel ranks), MINE updates every align.mine_every steps setting the pair weights, held-out
    retrieval every align.eval_every steps, checkpoints -> final HF folders of the LM and the heads.

Data order, DropPath-free forward passes, MINE shuffles and view choices are functions of (seed, step), and the
MINE state is in the checkpoint, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from data_prep.atomic import atomic_write_json

from ..config import ConfigError, TrainConfig, read_mapping
from ..data import DataError, ProgressiveSampler, Stage, batch_iterator, open_dataset
from ..metrics import MetricsWriter, log0
from .data import collate, sample_order
from .heads import PAIRS, AlignHeads, AlignHeadsConfig
from .loss import gather_rows_no_grad, infonce_bound
from .mine import MineEstimator, pair_weights
from .model import MODALITIES, PAIR_SIDES, AlignModel
from .retrieval import recall_at_k

log = logging.getLogger("r1_ds.align")

EVAL_DIRECTIONS = (
    ("image", "text"),
    ("text", "image"),
    ("image", "code"),
    ("code", "image"),
    ("text", "code"),
    ("code", "text"),
)


def check_layout(cfg: TrainConfig) -> None:
    """Data parallel (any ZeRO stage DeepSpeed allows) only, with the reasons for the refused layouts."""
    if cfg.parallel.pipe > 1:
        raise ConfigError(
            f"parallel.pipe={cfg.parallel.pipe} with align.objective={cfg.align.objective}: the contrastive loss needs "
            "the pooled text and code features of every row of a micro-batch in one place, and DeepSpeed's pipeline "
            "engine passes one activation tensor per micro-batch through its stages and computes a per-micro-batch "
            "loss on the last stage only, with no way to gather features across data-parallel ranks with gradients. "
            "Fix: train alignment data parallel (parallel.pipe=1, ZeRO stage 0-2)."
        )
    if cfg.parallel.tensor > 1:
        raise ConfigError(
            f"parallel.tensor={cfg.parallel.tensor} with align.objective={cfg.align.objective}: alignment runs data "
            "parallel only (its negatives are gathered over the world group, which under tensor parallelism would "
            "repeat each row once per tensor rank). Fix: set parallel.tensor=1."
        )


def triples_file(path: str) -> str:
    """The triples.jsonl of a prep folder, or the file itself."""
    if os.path.isdir(path):
        path = os.path.join(path, "triples", "triples.jsonl")
    if not os.path.isfile(path):
        raise DataError(
            f"align.triples: {path!r} does not exist. Fix: run `r1-ds prep --out DIR` and pass DIR or "
            "DIR/triples/triples.jsonl."
        )
    return path


def load_tokenizer(path: str | None, triples: str):
    from transformers import AutoTokenizer

    path = path or os.path.join(os.path.dirname(os.path.dirname(triples)), "tokenizer")
    if not os.path.isdir(path):
        raise DataError(
            f"align.tokenizer: {path!r} is not a tokenizer folder. Fix: set align.tokenizer to the "
            "folder `r1-ds prep` wrote (OUT/tokenizer)."
        )
    return AutoTokenizer.from_pretrained(path)


def prepare_data(cfg: TrainConfig, *, rank: int, vocab_size: int):
    """AlignData of the run; rank 0 embeds the images (or reads the cache) first, the others then read the cache."""
    from deepspeed import comm as dist

    from .data import build_align_data, load_image_embeddings, parse_triples
    from .image_tower import build_image_tower, embeddings_cache

    a = cfg.align
    path = triples_file(a.triples)
    tokenizer = load_tokenizer(a.tokenizer, path)
    rows, dropped = parse_triples(path)
    if a.kinds:
        rows = [r for r in rows if r.kind in a.kinds]
    if not a.use_views:
        for r in rows:
            r.views = []
    cache = embeddings_cache(path, a.image_tower, a.image_tower_checkpoint, a.image_size, cfg.seed)

    def tower():
        return build_image_tower(a.image_tower, a.image_tower_checkpoint, image_size=a.image_size, seed=cfg.seed)

    failure = None
    if rank == 0:
        try:
            images = load_image_embeddings(rows, cache, tower)
        except Exception as err:  # noqa: BLE001 - the other ranks must not wait at the barrier forever
            failure = err
    holder = [repr(failure) if failure else None]
    dist.broadcast_object_list(holder, src=0)
    if failure is not None:
        raise failure
    if holder[0] is not None:
        raise DataError(f"rank 0 could not embed the images: {holder[0]}")
    if rank != 0:
        images = load_image_embeddings(rows, cache, tower)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = build_align_data(
        rows,
        dropped,
        *images,
        tokenizer,
        text_len=a.text_len,
        code_len=a.code_len,
        vocab_size=vocab_size,
        held_out_percent=a.held_out_percent,
    )
    return data, pad


class MineWeights:
    """One MINE estimator per pair on the features of all data-parallel ranks (every rank computes the same, so the
    weights agree without communication), recent features in a buffer, smoothed estimates and the weights."""

    def __init__(self, a, *, proj_dim: int, seed: int):
        self.a = a
        self.est = [
            MineEstimator(proj_dim, proj_dim, lr=1e-3, variant=a.mine_variant, seed=seed + p) for p in range(len(PAIRS))
        ]
        self.buffers: list[torch.Tensor | None] = [None] * len(PAIRS)  # (n, 2, D)
        self.estimates: list[float | None] = [None] * len(PAIRS)
        self.raw: list[float | None] = [None] * len(PAIRS)
        self.weights = [1.0] * len(PAIRS)

    def add(self, feats: dict[str, torch.Tensor], has: torch.Tensor) -> None:
        for p, (i, j) in enumerate(PAIR_SIDES):
            rows = has[:, i] & has[:, j]
            if not rows.any():
                continue
            new = torch.stack([feats[MODALITIES[i]][rows], feats[MODALITIES[j]][rows]], dim=1).float().cpu()
            buf = new if self.buffers[p] is None else torch.cat([self.buffers[p], new])
            self.buffers[p] = buf[-self.a.mine_buffer :]

    def update(self, step: int) -> None:
        a = self.a
        for p, est in enumerate(self.est):
            buf = self.buffers[p]
            if buf is None or buf.shape[0] < 8:
                continue
            gen = torch.Generator().manual_seed(step * 7919 + p)
            for _ in range(a.mine_steps):
                idx = torch.randint(buf.shape[0], (min(a.mine_batch, buf.shape[0]),), generator=gen)
                est.update(buf[idx, 0], buf[idx, 1])
            value = est.estimate(buf[:, 0], buf[:, 1])
            self.raw[p] = value
            old = self.estimates[p]
            self.estimates[p] = value if old is None else a.mine_smoothing * old + (1 - a.mine_smoothing) * value
        if step >= a.mine_warmup:
            w = pair_weights(
                {PAIRS[p]: e for p, e in enumerate(self.estimates)},
                temperature=a.weight_temperature,
                low=a.weight_min,
                high=a.weight_max,
            )
            self.weights = [w[p] for p in PAIRS]

    def state_dict(self) -> dict:
        return {
            "est": [e.state_dict() for e in self.est],
            "buffers": self.buffers,
            "estimates": self.estimates,
            "raw": self.raw,
            "weights": self.weights,
        }

    def load_state_dict(self, state: dict) -> None:
        for e, s in zip(self.est, state["est"]):
            e.load_state_dict(s)
        self.buffers, self.estimates = list(state["buffers"]), list(state["estimates"])
        self.raw, self.weights = list(state["raw"]), list(state["weights"])


@torch.no_grad()
def retrieval_metrics(
    module: AlignModel, items: list[dict], *, image_dim: int, pad_id: int, max_rows: int, device
) -> dict:
    """Held-out R@1 / R@5 per direction (query -> candidates among the rows holding both), with chance R@1."""
    was_training = module.training
    module.eval()
    feats = {m: [] for m in MODALITIES}
    for start in range(0, len(items), 64):
        batch = collate(items[start : start + 64], image_dim=image_dim, pad_id=pad_id)
        emb = module.embed({k: v.to(device) for k, v in batch.items()})
        for m in MODALITIES:
            feats[m].append(emb[m].float().cpu())
    module.train(was_training)
    feats = {m: torch.cat(v) if v else torch.zeros(0, 1) for m, v in feats.items()}
    has = torch.tensor([it["has"] for it in items], dtype=torch.bool).reshape(-1, 3)
    out = {}
    for q, c in EVAL_DIRECTIONS:
        rows = (has[:, MODALITIES.index(q)] & has[:, MODALITIES.index(c)]).nonzero().squeeze(1)[:max_rows]
        if rows.numel() < 2:
            continue
        sim = feats[q][rows] @ feats[c][rows].T
        name = f"eval/{q}->{c}"
        out.update(
            {
                f"{name}/R@1": recall_at_k(sim, 1),
                f"{name}/R@5": recall_at_k(sim, 5),
                f"{name}/chance@1": 1 / rows.numel(),
                f"{name}/n": int(rows.numel()),
            }
        )
    return out


def is_align_checkpoint(tag_dir: str, *, trusted: bool = False) -> bool:
    """Whether an alignment run wrote this tag folder (its client state holds the MINE state). The file is
    memory-mapped and read weights-only (unless trusted), so no tensor is read."""
    from ..parallel.deepspeed_patches import weights_only_loads

    path = os.path.join(tag_dir, "mp_rank_00_model_states.pt")
    if not os.path.isfile(path):
        return False
    with weights_only_loads(trusted):
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)  # weights-only (guard)
    return "r1_align_mine" in state


def check_align_checkpoint(load_dir: str, tag: str, *, trusted: bool = False) -> None:
    """Refuse, before DeepSpeed reads it, a checkpoint that an alignment run did not write (its module differs).
    Read weights-only with the checkpoint allowlist (r1_ds.safe_load) unless the user trusts the checkpoint."""
    from ..checkpoint import CheckpointError

    if not is_align_checkpoint(os.path.join(load_dir, tag), trusted=trusted):
        raise CheckpointError(
            f"{os.path.join(load_dir, tag)} is not an alignment checkpoint (no r1_align_mine state). "
            "Fix: resume from an alignment run's checkpoints, or start fresh with "
            "checkpoint.resume=none (model.init_from=<an exported LM folder> starts from its weights)."
        )


def pair_metrics(
    summed: torch.Tensor,
    valid: torch.Tensor,
    present: torch.Tensor,
    *,
    heads: AlignHeads,
    mine: MineWeights,
    weights: torch.Tensor,
    with_lm: bool,
) -> dict:
    """The logged losses since the last record: summed = (per-pair loss sums, LM loss sum, objective sum,
    micro-steps), averaged over the data ranks; valid / present = rows holding each pair and micro-steps that
    held it, over all ranks. A pair's loss is its mean over the micro-steps that held it."""
    n_micro = float(summed[-1])
    out = {"loss": float(summed[-2]) / n_micro}  # the objective the steps minimised
    if with_lm:
        out["lm_loss"] = float(summed[len(PAIRS)]) / n_micro
    for p, name in enumerate(PAIRS):
        loss_p = float(summed[p]) / float(present[p]) if present[p] else None
        rows = float(valid[p] / present[p]) if present[p] else 0
        out.update(
            {
                f"align/{name}/loss": loss_p,
                f"align/{name}/temperature": 1 / float(heads.logit_scale(p).detach()),
                f"align/{name}/mine": mine.raw[p],
                f"align/{name}/mine_smoothed": mine.estimates[p],
                f"align/{name}/weight": float(weights[p]),  # as applied in these steps
                f"align/{name}/infonce_bound": infonce_bound(loss_p, int(rows)) if rows else None,
            }
        )
    return out


def train_align(cfg: TrainConfig):
    """Train per `cfg` with the alignment objective; returns the DeepSpeed engine."""
    from .. import checkpoint as ckpt
    from ..distributed import init_distributed, peak_memory_gib
    from ..ds_config import build_ds_config, find_ds_config
    from ..ds_schema import check_deepspeed_keys, check_learning_rate
    from ..model_setup import build_model, param_groups
    from ..run_lock import exit_with_launcher, lock_run_folders
    from ..schedule import WarmupCosine, step_seed

    check_layout(cfg)
    from deepspeed.accelerator import get_accelerator

    exit_with_launcher()  # a launched rank ends with its launcher, as in the LM trainer
    init_distributed()
    import deepspeed
    from deepspeed import comm as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    device_type = get_accelerator().device_name()
    ds_path = find_ds_config(cfg.deepspeed_config)
    ds_json = read_mapping(ds_path)
    check_deepspeed_keys(ds_json, ds_path)  # the LM trainer's start-up checks, the same order
    ds_config, dims, plan, notes, compression = build_ds_config(cfg, ds_json, world_size=world, device_type=device_type)
    check_learning_rate(ds_config, ds_path)
    if compression:
        raise ConfigError(
            "r1_compression with align.objective: the compressed all-reduce is not wired into the "
            "alignment trainer. Fix: remove the r1_compression section from the DeepSpeed JSON."
        )
    for note in notes:
        log0("precision/settings: %s", note)
    a = cfg.align
    log0(
        "alignment (%s): layout %s; rows per step: global %d = micro %d x grad_accum %d x data %d",
        a.objective,
        dims.describe(),
        plan.global_batch,
        plan.micro_batch,
        plan.grad_accum,
        plan.data_parallel,
    )
    out_dir = cfg.output_dir
    ckpt_dir = cfg.checkpoint.dir or os.path.join(out_dir, "checkpoints")
    ckpt.check_output_folder(out_dir, "output folder")
    ckpt.check_output_folder(ckpt_dir, "checkpoint folder")
    run_locks = lock_run_folders(out_dir, ckpt_dir, rank=rank)  # held until training ends
    found = ckpt.find_resume(ckpt_dir, cfg.checkpoint.resume)
    if found:
        saved = ckpt.read_saved_checkpoint(*found, trusted=cfg.checkpoint.trust)  # its pickles scanned first
        check_align_checkpoint(*found, trusted=cfg.checkpoint.trust)
        ckpt.check_resume_layout(
            saved,
            pipe=dims.pipe,
            tensor=dims.tensor,
            data=dims.data,
            zero_stage=ds_config.get("zero_optimization", {}).get("stage", 0),
        )
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "train_config.json"), cfg.to_dict())
        atomic_write_json(os.path.join(out_dir, "ds_config.json"), ds_config)

    # ---- model, heads, data
    lm = build_model(cfg, device_type)
    config = lm.config
    data, pad_id = prepare_data(cfg, rank=rank, vocab_size=config.vocab_size)
    summary = data.summary()
    log0(
        "triples: %d train rows, %d held out; dropped by reason: %s",
        summary["train_rows"],
        summary["held_out_rows"],
        summary["dropped"] or "none",
    )
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "align_data.json"), summary)
    torch.manual_seed(cfg.seed + 1)
    heads = AlignHeads(
        AlignHeadsConfig(
            hidden_size=config.hidden_size,
            image_dim=data.image_dim,
            proj_dim=a.proj_dim,
            image_hidden=a.image_hidden,
            init_temperature=a.init_temperature,
            min_temperature=a.min_temperature,
            max_temperature=a.max_temperature,
        )
    )
    train_images = [it["image"][0] for it in data.train if it["image"]]
    if train_images:
        heads.set_image_stats(torch.stack(train_images))
    group = torch.distributed.group.WORLD if dims.data > 1 else None  # data parallel = the world here
    with_lm = a.objective == "lm+align"
    module = AlignModel(lm, heads, group=group, align_weight=a.weight if with_lm else 1.0)
    order = sample_order(data.train, a.image_repeats)
    sampler = ProgressiveSampler(len(order), [Stage(0, cfg.schedule.steps, plan.global_batch, 1.0)], cfg.seed)
    if with_lm:
        lm_data, seq_len = open_dataset(
            cfg.data.path,
            seq_len=cfg.data.seq_len,
            vocab_size=config.vocab_size,
            synthetic_sequences=cfg.data.synthetic_sequences,
            seed=cfg.seed,
        )
        lm_sampler = ProgressiveSampler(len(lm_data), [Stage(0, cfg.schedule.steps, plan.global_batch, 1.0)], cfg.seed)
    weight_decay = ds_config["optimizer"]["params"].get("weight_decay", 0.0)
    schedule = WarmupCosine(cfg.schedule.warmup_steps, cfg.schedule.steps, cfg.schedule.min_lr_ratio)
    engine, *_ = deepspeed.initialize(
        model=module,
        model_parameters=param_groups(module, weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    if engine.checkpoint_engine.is_decoupled():
        raise ConfigError(
            "a decoupled (asynchronous) DeepSpeed checkpoint engine cannot be saved atomically by "
            "r1-ds. Fix: remove the decoupled checkpoint setting from the DeepSpeed JSON."
        )
    mine = MineWeights(a, proj_dim=a.proj_dim, seed=cfg.seed)

    start = 0
    if found:
        client = ckpt.load(engine, *found, trusted=cfg.checkpoint.trust)
        start = engine.global_steps
        sampler.check_resume(client.get("r1_sampler"), start)
        mine.load_state_dict(client["r1_align_mine"])

    def client_state(step: int) -> dict:
        return {
            "r1_sampler": sampler.state_dict(step),
            "r1_align_mine": mine.state_dict(),
            "r1_layout": {"pipe": dims.pipe, "tensor": dims.tensor, "data": dims.data},
            "r1_model_config": config.to_dict(),
            "r1_train_config": cfg.to_dict(),
            "r1_align": True,
        }

    total = cfg.schedule.steps
    metrics = MetricsWriter(
        out_dir,
        total_steps=total,
        start_step=start,
        tensorboard=cfg.log.tensorboard,
        progress=cfg.log.progress,
        enabled=rank == 0,
    )
    coords = dims.coords(rank)
    device = engine.device
    t_last, pairs_since, t_start, last_logged = time.perf_counter(), 0, time.perf_counter(), start
    acc = torch.zeros(len(PAIRS) + 3)  # per-pair loss sums, lm loss sum, objective sum, micro-steps
    valid = torch.zeros(len(PAIRS))  # rows holding each pair, over all ranks and micro-steps since the last log
    present = torch.zeros(len(PAIRS))  # micro-steps in which some rank held the pair (its loss means something)
    try:
        for step in range(start, total):
            gas = engine.gradient_accumulation_steps()
            lr = engine.get_lr()[0]
            torch.manual_seed(step_seed(cfg.seed, step, coords.data, coords.pipe))
            view_rng = np.random.default_rng([cfg.seed, step, coords.data]) if a.use_views else None
            micro = sampler.micro_batches(
                step, data_rank=coords.data, data_size=dims.data, micro_batch=engine.train_micro_batch_size_per_gpu()
            )
            lm_batches = (
                batch_iterator(
                    lm_data,
                    lm_sampler.micro_batches(
                        step,
                        data_rank=coords.data,
                        data_size=dims.data,
                        micro_batch=engine.train_micro_batch_size_per_gpu(),
                    ),
                    seq_len,
                )
                if with_lm
                else None
            )
            weights = torch.tensor(mine.weights)
            for m, idx in enumerate(micro):
                batch = collate(
                    [data.train[order[i]] for i in idx], image_dim=data.image_dim, pad_id=pad_id, view_rng=view_rng
                )
                batch["weights"] = weights
                if with_lm:
                    batch["lm_ids"] = next(lm_batches)[0]
                batch = {k: v.to(device) for k, v in batch.items()}
                engine.set_gradient_accumulation_boundary(m == gas - 1)
                out = engine(batch)
                engine.backward(out["loss"])
                engine.step()
                has = batch["has"]
                feats = out["features"]
                if group is not None:
                    has = gather_rows_no_grad(has.to(torch.uint8), group).to(torch.bool)
                    feats = {k: gather_rows_no_grad(v, group) for k, v in feats.items()}
                mine.add(feats, has.cpu())
                for p, (i, j) in enumerate(PAIR_SIDES):
                    count = float((has[:, i] & has[:, j]).sum())
                    valid[p] += count
                    present[p] += count > 0
                acc[: len(PAIRS)] += out["pair_loss"].float().cpu()
                if with_lm:
                    acc[len(PAIRS)] += float(out["lm_loss"])
                acc[-2] += float(out["loss"].detach())
                acc[-1] += 1
            done = step + 1
            pairs_since += engine.train_batch_size()
            if done % a.mine_every == 0:
                mine.update(done)
            if done % cfg.log.every == 0 or done == total:
                summed = acc.clone()
                if group is not None:
                    dist.all_reduce(summed)
                    summed /= world
                now = time.perf_counter()
                record = {
                    "step": done,
                    "lr": lr,
                    "pairs_per_s": pairs_since / max(now - t_last, 1e-9),
                    "elapsed_s": now - t_start,
                    "peak_mem_gib": peak_memory_gib(),
                    **pair_metrics(
                        summed, valid, present, heads=engine.module.heads, mine=mine, weights=weights, with_lm=with_lm
                    ),
                }
                norm = engine.get_global_grad_norm()
                record["grad_norm"] = float(norm) if norm is not None else None
                if done % a.eval_every == 0 or done == total:
                    record.update(
                        retrieval_metrics(
                            engine.module,
                            data.held_out,
                            image_dim=data.image_dim,
                            pad_id=pad_id,
                            max_rows=a.eval_rows,
                            device=device,
                        )
                    )
                metrics.write(record)
                metrics.progress(done - last_logged, {"loss": f"{record['loss']:.4f}"})
                last_logged = done
                acc.zero_()
                valid.zero_()
                present.zero_()
                # the next interval starts here: pairs/s counts training steps, not the held-out retrieval
                t_last, pairs_since = time.perf_counter(), 0
            if cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done != total:
                ckpt.save(engine, ckpt_dir, done, client_state(done), keep=cfg.checkpoint.keep)
        if start < total or not found:
            ckpt.save(engine, ckpt_dir, total, client_state(total), keep=cfg.checkpoint.keep)
        if rank == 0:
            final = os.path.join(out_dir, "align")
            engine.module.heads.save_pretrained(os.path.join(final, "heads"))
            engine.module.lm.save_pretrained(os.path.join(final, "lm"))
    finally:
        metrics.close()
        for lock in run_locks:
            lock.release()
    log0(
        "done: %d alignment steps, checkpoints in %s, heads and LM in %s",
        total,
        ckpt_dir,
        os.path.join(out_dir, "align"),
    )
    return engine


def read_retrieval(metrics_path: str) -> dict:
    """The last record's held-out retrieval metrics of a run's metrics.jsonl (for the demo and benchmarks)."""
    from ..metrics import read_metrics

    last = {}
    for rec in read_metrics(metrics_path):
        if any(k.startswith("eval/") for k in rec):
            last = rec
    return {k: v for k, v in last.items() if k.startswith("eval/")}
