"""CLIP image-caption consistency (open_clip), batched, on GPU when present; the model loads on first use.

Score: CLIPScore (Hessel et al. 2021) ``2.5 * max(cos, 0)``; keeping score >= 0.75 means cosine >= 0.30, exactly
LAION-400M's cut for OpenAI ViT-B/32. That calibration only holds for that checkpoint, so ``mode="topk"`` keeps
the top ``keep_fraction`` of each part by cosine instead (DataComp-style; DataComp ranks the whole pool, we rank
within each part of the run, default 256 pairs). The raw cosine is stored in every pair's metadata either way.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from data_prep.document import Document, FilterResult
from data_prep.errors import PrepError
from data_prep.filters.base import BaseFilter

log = logging.getLogger(__name__)

CLIPSCORE_WEIGHT = 2.5
# Checkpoint families for which 0.75 (cos 0.30) was calibrated: OpenAI ViT-B/32 (LAION-400M's filter model).
CALIBRATED_ARCHS = ("ViT-B-32", "ViT-B-32-quickgelu")


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """``ARCH`` (random init), ``ARCH:/path/ckpt`` or ``local-dir:/path`` -> (arch, checkpoint or None)."""
    if spec.startswith(("local-dir:", "hf-hub:")):
        return spec, None
    arch, sep, ckpt = spec.partition(":")
    if not arch or (sep and not ckpt):
        raise PrepError(f"--clip-model {spec!r}: expected ARCH, ARCH:/path/to/checkpoint or local-dir:/path/to/folder")
    return arch, (ckpt or None)


def clipscore(cosine: float) -> float:
    return CLIPSCORE_WEIGHT * max(cosine, 0.0)


def decode_to_uint8(data: bytes | None, size: int) -> Any:
    """Fast path of the image side: decode, RGB, resize shortest side (bicubic), centre crop ->
    (size, size, 3) uint8, or None when the bytes do not decode. A module-level function so that
    worker processes can run it (decoding holds the GIL part of the time: threads stop scaling)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data or b"")) as im:
            im = im.convert("RGB")
        w, h = im.size
        # torchvision's Resize(int) on a PIL image: short side -> size, long side -> int(size * long / short)
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        im = im.resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))  # torchvision's CenterCrop
        return np.asarray(im.crop((left, top, left + size, top + size)))
    except Exception:  # noqa: BLE001 - any decode failure is this pair's problem, not the run's
        return None


class ClipScoreFilter(BaseFilter):
    name = "clip"
    batched = True

    def __init__(
        self,
        spec: str,
        *,
        mode: str = "clipscore",
        threshold: float = 0.75,
        keep_fraction: float = 0.3,
        batch_size: int = 256,
        device: str = "auto",
        workers: int | None = None,
        fast_preprocess: bool | None = None,
        decode_processes: bool | None = None,
    ):
        if mode not in ("clipscore", "topk"):
            raise PrepError(f"--clip-mode {mode}: must be 'clipscore' (fixed CLIPScore cut) or 'topk' (keep top k%)")
        if not 0.0 < keep_fraction <= 1.0:
            raise PrepError(f"--clip-keep-fraction {keep_fraction}: must be in (0, 1]; e.g. 0.3 keeps the top 30%")
        self.spec = spec
        """open_clip model: ARCH, ARCH:/path/ckpt or local-dir:/path (no download ever)."""
        self.arch, self.checkpoint = parse_clip_spec(spec)
        self.mode = mode
        """``clipscore``: keep 2.5*max(cos,0) >= threshold; ``topk``: keep the top keep_fraction of each part."""
        self.threshold = threshold
        """CLIPScore cut for mode clipscore (0.75 = cosine 0.30)."""
        self.keep_fraction = keep_fraction
        """Share kept per part in mode topk."""
        self.batch_size = batch_size
        """Pairs per forward pass."""
        self.device = device
        """auto, cpu, cuda or cuda:N."""
        self.workers = workers
        """Threads decoding and preprocessing images (PIL releases the GIL); None: up to 16 on GPU, 1 on CPU."""
        self.fast_preprocess = fast_preprocess
        """Resize/crop to uint8 in the worker threads and normalise on the device (same numbers as open_clip's
        transform, tested); None: on for CUDA when the model uses the standard shortest-side bicubic transform."""
        self.decode_processes = decode_processes
        """Decode in `workers` processes instead of threads (fast path only): scales past the GIL on many cores.
        None: processes on CUDA (faster on an H200 host: benchmarks/results/data_prep.md), threads on CPU."""
        self._model: Any = None
        if mode == "clipscore" and self.arch not in CALIBRATED_ARCHS:
            log.warning(
                "clip: mode clipscore with threshold %.2f is calibrated for OpenAI ViT-B/32 only; %s may need "
                "--clip-mode topk or a recalibrated threshold (docs/data.md)",
                threshold,
                self.arch,
            )

    def config(self) -> dict[str, Any]:
        return {
            k: v for k, v in super().config().items() if k not in ("workers", "fast_preprocess", "decode_processes")
        }

    def _load(self) -> None:
        if self._model is not None:
            return
        import open_clip
        import torch

        from data_prep.devices import resolve_device

        self._device = resolve_device(self.device)
        if self.checkpoint is not None and not os.path.isfile(self.checkpoint):
            raise PrepError(
                f"--clip-model {self.spec}: checkpoint {self.checkpoint} is not a local file; pass "
                f"ARCH:/path/to/open_clip_pytorch_model.bin (data_prep never downloads weights)"
            )
        if self.checkpoint is None and not self.arch.startswith("local-dir:"):
            log.warning("clip: %s has random weights (no checkpoint given); scores are meaningless", self.arch)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.arch, pretrained=self.checkpoint, device=self._device
            )
        except RuntimeError as exc:
            raise PrepError(f"--clip-model {self.spec}: open_clip could not build it ({exc})") from exc
        model.eval()
        self._model, self._preprocess = model, preprocess
        self._tokenizer = open_clip.get_tokenizer(self.arch)
        self._torch = torch
        n_workers = self.workers or (16 if self._device.startswith("cuda") else 1)
        self._n_workers = max(1, min(n_workers, os.cpu_count() or 1))
        use_fast = self._device.startswith("cuda") if self.fast_preprocess is None else self.fast_preprocess
        self._fast = self._fast_spec() if use_fast else None
        if self._fast is not None:
            _, mean, std = self._fast
            self._mean = torch.tensor(mean, device=self._device).view(1, 3, 1, 1)
            self._std = torch.tensor(std, device=self._device).view(1, 3, 1, 1)

    def _fast_spec(self) -> tuple[int, tuple, tuple] | None:
        """(size, mean, std) when the transform is open_clip's standard one (shortest-side bicubic resize, centre
        crop to a square, RGB, normalise), else None: then the model's own transform is used."""
        cfg = getattr(self._model.visual, "preprocess_cfg", None) or {}
        size = cfg.get("size")
        size = (size, size) if isinstance(size, int) else tuple(size or ())
        if (
            cfg.get("resize_mode") != "shortest"
            or cfg.get("interpolation") != "bicubic"
            or len(size) != 2
            or size[0] != size[1]
        ):
            return None
        return size[0], tuple(cfg["mean"]), tuple(cfg["std"])

    def _to_pixels(self, arrays: list[Any]) -> Any:
        """uint8 (B, S, S, 3) on the host -> normalised float (B, 3, S, S) on the device."""
        import numpy as np

        torch = self._torch
        x = torch.from_numpy(np.stack(arrays)).to(self._device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # ToTensor
        return (x - self._mean) / self._std  # Normalize

    def _prepare(self, doc: Document) -> Any:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(doc.data or b"")) as im:
                return self._preprocess(im.convert("RGB"))
        except Exception:  # noqa: BLE001 - any decode failure is this pair's problem, not the run's
            return None

    def _use_processes(self) -> bool:
        if self._fast is None:  # the slow path's transforms are not worth shipping to processes
            return False
        return self._device.startswith("cuda") if self.decode_processes is None else self.decode_processes

    def _fall_back_to_threads(self):
        log.warning(
            "clip: the image-decoding worker processes could not start (a script that spawns processes "
            'needs an `if __name__ == "__main__":` guard); decoding in threads instead'
        )
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self.decode_processes = False
        return self._decode_pool()

    def _decode_pool(self):
        """Workers for the image side (made once, kept for later batches), or None for in-line decoding."""
        if self._n_workers <= 1:
            return None
        if getattr(self, "_pool", None) is None:
            import atexit

            if self._use_processes():
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # spawn: the parent may hold CUDA state, which a forked child must not inherit
                self._pool = ProcessPoolExecutor(self._n_workers, mp_context=multiprocessing.get_context("spawn"))
            else:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self._n_workers)
            atexit.register(self._pool.shutdown)
        return self._pool

    def _submit(self, pool, chunk: Sequence[Document]):
        """Start preparing a chunk's images; returns something list() turns into the results, in order."""
        if self._fast is not None:  # raw bytes to a module-level function: picklable for worker processes
            fn, items = functools.partial(decode_to_uint8, size=self._fast[0]), [d.data for d in chunk]
        else:
            fn, items = self._prepare, chunk
        if pool is None:
            return map(fn, items)
        # chunksize batches the hand-offs to worker processes (thread pools ignore it)
        return pool.map(fn, items, chunksize=max(1, len(items) // (4 * self._n_workers)))

    def cosines(self, docs: Sequence[Document]) -> list[float | None]:
        """Cosine(image, caption) per pair; None where the image cannot be decoded. When `docs` spans
        several batches, the images of the next one are prepared while the model runs on this one."""
        self._load()
        torch = self._torch
        out: list[float | None] = []
        chunks = [docs[i : i + self.batch_size] for i in range(0, len(docs), self.batch_size)]
        pool = self._decode_pool()
        pending = self._submit(pool, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            try:
                pixels = list(pending)
            except BrokenProcessPool:  # e.g. a script without `if __name__ == "__main__":` cannot spawn
                pool = self._fall_back_to_threads()
                pixels = list(self._submit(pool, chunk))
            if k + 1 < len(chunks):
                pending = self._submit(pool, chunks[k + 1])  # decode ahead while the model runs
            ok = [i for i, p in enumerate(pixels) if p is not None]
            chunk_cos: list[float | None] = [None] * len(chunk)
            if ok:
                if self._fast is not None:
                    images = self._to_pixels([pixels[i] for i in ok])  # (B, 3, H, W)
                else:
                    images = torch.stack([pixels[i] for i in ok]).to(self._device, non_blocking=True)  # (B, 3, H, W)
                texts = self._tokenizer([chunk[i].text for i in ok]).to(self._device)  # (B, 77)
                use_amp = self._device.startswith("cuda")
                with torch.inference_mode(), torch.autocast("cuda", enabled=use_amp, dtype=torch.float16):
                    img = self._model.encode_image(images, normalize=True)  # (B, D)
                    txt = self._model.encode_text(texts, normalize=True)  # (B, D)
                    cos = (img.float() * txt.float()).sum(-1).cpu().tolist()
                for i, c in zip(ok, cos):
                    chunk_cos[i] = c
            out.extend(chunk_cos)
        return out

    def filter_batch(self, docs: Sequence[Document]) -> list[FilterResult]:
        cosines = self.cosines(docs)
        for doc, cos in zip(docs, cosines):
            if cos is not None:
                doc.metadata["clip_cosine"] = round(cos, 6)
                doc.metadata["clip_score"] = round(clipscore(cos), 6)
                doc.metadata["clip_model"] = self.spec
        if self.mode == "clipscore":
            keep = {i for i, c in enumerate(cosines) if c is not None and clipscore(c) >= self.threshold}
            reason = "low_clip_score"
        else:  # topk: the best keep_fraction of the decodable pairs, ties broken by position
            valid = sorted((i for i, c in enumerate(cosines) if c is not None), key=lambda i: (-cosines[i], i))
            keep = set(valid[: math.ceil(self.keep_fraction * len(valid))])
            reason = "below_top_fraction"
        return [True if i in keep else (False, "corrupt_image" if c is None else reason) for i, c in enumerate(cosines)]

    def filter(self, doc: Document) -> FilterResult:
        return self.filter_batch([doc])[0]
