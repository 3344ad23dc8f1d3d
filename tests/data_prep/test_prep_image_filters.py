"""Image decoding / caption checks, and the CLIP filter with a tiny random open_clip model loaded from a local file."""

import json

import pytest

from data_prep.document import Document
from data_prep.errors import PrepError
from data_prep.filters.caption import CaptionFilter
from data_prep.filters.clip_score import ClipScoreFilter, clipscore, decode_to_uint8, parse_clip_spec
from data_prep.filters.image_decode import ImageDecodeFilter
from tests.data_prep.helpers import make_png


def pair(caption="a red square", data=b""):
    return Document(id="p", text=caption, modality="image", data=data)


def test_image_decode(png):
    f = ImageDecodeFilter()
    d = pair(data=png)
    assert f.filter(d) is True
    assert (d.metadata["width"], d.metadata["height"], d.metadata["format"]) == (48, 48, "PNG")
    assert f.filter(pair(data=png[: len(png) // 2])) == (False, "corrupt_image")
    assert f.filter(pair(data=b"just some text, not an image")) == (False, "not_an_image")
    assert f.filter(pair(data=b"")) == (False, "empty_file")
    assert f.filter(pair(data=make_png((8, 40)))) == (False, "too_small")
    assert ImageDecodeFilter(max_pixels=100).filter(pair(data=png)) == (False, "too_many_pixels")
    assert ImageDecodeFilter(formats=("JPEG",)).filter(pair(data=png)) == (False, "unsupported_format")


def test_truncated_jpeg_is_dropped():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    data = buf.getvalue()
    assert ImageDecodeFilter().filter(pair(data=data)) is True
    assert ImageDecodeFilter().filter(pair(data=data[: len(data) - 200])) == (False, "corrupt_image")


def test_caption():
    f = CaptionFilter(max_chars=20)
    assert f.filter(pair("  ")) == (False, "empty_caption")
    assert f.filter(pair("x" * 21)) == (False, "caption_too_long")
    d = pair("  a red circle \n")
    assert f.filter(d) is True and d.text == "a red circle"
    assert CaptionFilter(min_words=3).filter(pair("red circle")) == (False, "short_caption")


def test_clip_spec_parsing():
    assert parse_clip_spec("ViT-B-32") == ("ViT-B-32", None)
    assert parse_clip_spec("ViT-B-32-quickgelu:/m/openai.bin") == ("ViT-B-32-quickgelu", "/m/openai.bin")
    assert parse_clip_spec("local-dir:/models/clip") == ("local-dir:/models/clip", None)
    with pytest.raises(PrepError, match="expected ARCH"):
        parse_clip_spec("ViT-B-32:")
    assert clipscore(0.30) == pytest.approx(0.75)
    assert clipscore(-0.2) == 0.0


def test_clip_decisions_on_fixed_cosines(monkeypatch):
    docs = [pair(f"c{i}") for i in range(5)]
    cos = [0.35, 0.29, 0.30, -0.2, None]
    f = ClipScoreFilter("ViT-B-32")
    monkeypatch.setattr(f, "cosines", lambda d: cos)
    assert f.filter_batch(docs) == [
        True,
        (False, "low_clip_score"),
        True,
        (False, "low_clip_score"),
        (False, "corrupt_image"),
    ]
    assert docs[2].metadata["clip_cosine"] == pytest.approx(0.30) and docs[2].metadata["clip_score"] == pytest.approx(
        0.75
    )
    top = ClipScoreFilter("ViT-B-32", mode="topk", keep_fraction=0.5)
    monkeypatch.setattr(top, "cosines", lambda d: cos)
    # 4 valid cosines, keep ceil(0.5 * 4) = 2 best: 0.35 and 0.30
    assert top.filter_batch(docs) == [
        True,
        (False, "below_top_fraction"),
        True,
        (False, "below_top_fraction"),
        (False, "corrupt_image"),
    ]


def test_clip_bad_arguments():
    with pytest.raises(PrepError, match="keep-fraction"):
        ClipScoreFilter("ViT-B-32", mode="topk", keep_fraction=0)
    f = ClipScoreFilter("ViT-B-32:/no/such/checkpoint.bin", device="cpu")
    with pytest.raises(PrepError, match="not a local file"):
        f.cosines([pair(data=make_png())])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A 1-layer open_clip config registered from a JSON file, random weights saved to a local checkpoint."""
    import open_clip
    import torch

    tmp = tmp_path_factory.mktemp("clip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp / "dp-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp / "dp-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("dp-tiny-clip", pretrained=None)
    ckpt = tmp / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return f"dp-tiny-clip:{ckpt}"


def test_clip_cosines_match_the_model(tiny_clip):
    import io

    import open_clip
    import torch
    from PIL import Image

    docs = [
        pair(c, make_png(colour=col))
        for c, col in [("a red square", "red"), ("a blue square", "blue"), ("a green square", "green")]
    ]
    docs.append(pair("broken", b"not an image"))
    f = ClipScoreFilter(tiny_clip, mode="topk", keep_fraction=0.5, batch_size=2, device="cpu")
    cos = f.cosines(docs)
    assert cos[3] is None
    arch, ckpt = tiny_clip.split(":", 1)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=ckpt)
    model.eval()
    tok = open_clip.get_tokenizer(arch)
    with torch.no_grad():
        img = model.encode_image(
            torch.stack([preprocess(Image.open(io.BytesIO(d.data)).convert("RGB")) for d in docs[:3]]), normalize=True
        )
        txt = model.encode_text(tok([d.text for d in docs[:3]]), normalize=True)
    expected = (img * txt).sum(-1).tolist()
    assert cos[:3] == pytest.approx(expected, abs=1e-5)
    results = f.filter_batch(docs)
    assert sum(r is True for r in results) == 2  # ceil(0.5 * 3 valid)
    assert results[3] == (False, "corrupt_image")


def test_clip_fast_preprocess_matches_open_clip_transform(tiny_clip):
    """The GPU fast path (uint8 resize/crop in threads, normalise on the device) equals open_clip's transform."""
    import io

    import torch
    from PIL import Image

    docs = []
    for size, mode in [((48, 48), "RGB"), ((90, 40), "RGB"), ((37, 101), "RGBA"), ((33, 32), "P")]:
        im = Image.effect_noise(size, 60).convert(mode)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        docs.append(pair("noise", buf.getvalue()))
    ref = ClipScoreFilter(tiny_clip, mode="topk", device="cpu", fast_preprocess=False)
    fast = ClipScoreFilter(tiny_clip, mode="topk", device="cpu", fast_preprocess=True, workers=2)
    ref._load()
    fast._load()
    assert fast._fast is not None and ref._fast is None
    expected = torch.stack([ref._prepare(d) for d in docs])
    got = fast._to_pixels([decode_to_uint8(d.data, fast._fast[0]) for d in docs])
    assert got.shape == expected.shape == (4, 3, 32, 32)
    assert torch.allclose(got, expected, atol=1e-5)
    assert fast.cosines(docs) == pytest.approx(ref.cosines(docs), abs=1e-5)


def test_clip_decode_in_processes_equals_threads(tiny_clip):
    """Worker processes (past the GIL) prepare exactly what threads do, batches overlapping the model."""
    import io
    from concurrent.futures import ProcessPoolExecutor

    from PIL import Image

    docs = []
    for i, size in enumerate([(48, 48), (90, 40), (37, 101), (64, 33), (40, 40)]):
        buf = io.BytesIO()
        Image.effect_noise(size, 40 + 10 * i).convert("RGB").save(buf, format="JPEG")
        docs.append(pair(f"noise {i}", buf.getvalue()))
    docs.insert(2, pair("broken", b"\xff\xd8 not a jpeg"))
    kw = dict(mode="topk", device="cpu", fast_preprocess=True, workers=2, batch_size=2)
    threads = ClipScoreFilter(tiny_clip, **kw)
    procs = ClipScoreFilter(tiny_clip, decode_processes=True, **kw)
    a, b = threads.cosines(docs), procs.cosines(docs)
    assert isinstance(procs._pool, ProcessPoolExecutor) and not isinstance(threads._pool, ProcessPoolExecutor)
    assert a == b and a[2] is None and all(c is not None for i, c in enumerate(a) if i != 2)


def test_clip_falls_back_to_threads_when_processes_cannot_start(tiny_clip, monkeypatch, caplog):
    """A process pool that breaks (a script without a __main__ guard cannot spawn) costs a warning, not the run."""
    import concurrent.futures
    import io
    from concurrent.futures.process import BrokenProcessPool

    from PIL import Image

    class BrokenPool:
        def __init__(self, *a, **k):
            pass

        def map(self, *a, **k):
            def results():
                raise BrokenProcessPool("A child process terminated abruptly")
                yield

            return results()

        def shutdown(self, *a, **k):
            pass

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", BrokenPool)
    docs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.effect_noise((40, 40), 40 + 10 * i).convert("RGB").save(buf, format="JPEG")
        docs.append(pair(f"noise {i}", buf.getvalue()))
    kw = dict(mode="topk", device="cpu", fast_preprocess=True, workers=2, batch_size=2)
    got = ClipScoreFilter(tiny_clip, decode_processes=True, **kw)
    with caplog.at_level("WARNING"):
        cos = got.cosines(docs)
    assert cos == ClipScoreFilter(tiny_clip, **kw).cosines(docs)
    assert got.decode_processes is False and "decoding in threads instead" in caplog.text
