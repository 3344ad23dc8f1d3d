"""The part-by-part runner: counts add up, rejects carry reasons, odd documents never stop it, resume replays state."""

import json

from data_prep.document import Document
from data_prep.filters.base import BaseFilter
from data_prep.filters.exact_dedup import ExactDedupFilter
from data_prep.filters.length import LengthFilter
from data_prep.filters.read_error import ReadErrorFilter
from data_prep.pipeline import Pipeline


class Explodes(BaseFilter):
    name = "explodes"

    def filter(self, doc):
        if "boom" in doc.text:
            raise RuntimeError("filter bug")
        return True


class Batched(BaseFilter):
    name = "batched"
    batched = True

    def __init__(self):
        self.calls = []

    def filter_batch(self, docs):
        self.calls.append(len(docs))
        return [True if "keep" in d.text else (False, "model_says_no") for d in docs]


def make_docs():
    texts = ["keep a", "keep b", "", "keep a", "drop c", "keep boom", "keep d", "x" * 50, "keep b", "keep e"]
    docs = [Document(id=f"d{i}", text=t, modality="text") for i, t in enumerate(texts)]
    docs[6].metadata["read_error"] = "non_utf8"
    return docs


def filters():
    return [ReadErrorFilter(), LengthFilter(max_chars=40), ExactDedupFilter(), Explodes(), Batched()]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_counts_add_up_and_rejects_have_reasons(tmp_path):
    fs = filters()
    totals = Pipeline("text", fs, out_dir=tmp_path, part_size=4).run(make_docs())
    assert [totals[f.name]["in"] for f in fs] == [10, 9, 7, 5, 4]
    for name, st in totals.items():
        assert st["in"] == st["kept"] + st["dropped"] == st["kept"] + sum(st["reasons"].values()), name
    assert totals["read"]["reasons"] == {"non_utf8": 1}
    assert totals["length"]["reasons"] == {"empty": 1, "too_long": 1}
    assert totals["exact_dedup"]["reasons"] == {"duplicate": 2}  # "keep a" in part 0 and 0, "keep b" across parts
    assert totals["explodes"]["reasons"] == {"filter_error_RuntimeError": 1}
    assert totals["batched"]["reasons"] == {"model_says_no": 1}
    assert fs[-1].calls == [2, 1, 1]  # one batch per part, survivors only
    kept = [r["id"] for p in sorted((tmp_path / "kept" / "text").glob("*.jsonl")) for r in read_jsonl(p)]
    rejects = [r for p in sorted((tmp_path / "rejects" / "text").glob("*.jsonl")) for r in read_jsonl(p)]
    assert kept == ["d0", "d1", "d9"]
    assert len(kept) + len(rejects) == 10
    assert {(r["id"], r["stage"], r["reason"]) for r in rejects} >= {
        ("d3", "exact_dedup", "duplicate"),
        ("d8", "exact_dedup", "duplicate"),
        ("d6", "read", "non_utf8"),
    }


def test_resume_replays_committed_parts(tmp_path):
    ref = Pipeline("text", filters(), out_dir=tmp_path / "ref", part_size=4).run(make_docs())
    out = tmp_path / "run"
    Pipeline("text", filters(), out_dir=out, part_size=4).run(make_docs())
    # Simulate a crash after part 0 was committed: parts 1 and 2 lost their commit marks (their files may remain).
    for i in (1, 2):
        (out / "state" / "text" / f"part_{i:05d}.json").unlink()
    (out / "kept" / "text" / "part_00002.jsonl").unlink()
    fresh = filters()
    resumed = Pipeline("text", fresh, out_dir=out, part_size=4).run(make_docs())
    assert resumed == ref
    assert fresh[-1].calls == [1, 1]  # part 0 not recomputed
    # dedup state of part 0 was replayed: "keep b" in part 2 is still a duplicate of part 0's "keep b"
    for kind in ("kept", "rejects"):
        for p in sorted((tmp_path / "ref" / kind / "text").glob("*.jsonl")):
            assert (out / kind / "text" / p.name).read_bytes() == p.read_bytes()


def test_a_damaged_commit_record_redoes_its_part(tmp_path, caplog):
    """A commit record damaged from outside (garbage bytes, a JSON value of another shape) is not trusted: the part
    is redone, with a warning, and the outputs equal an undisturbed run's."""
    ref = Pipeline("text", filters(), out_dir=tmp_path / "ref", part_size=4).run(make_docs())
    out = tmp_path / "run"
    Pipeline("text", filters(), out_dir=out, part_size=4).run(make_docs())
    (out / "state" / "text" / "part_00001.json").write_bytes(b"\x00garbage{")
    (out / "state" / "text" / "part_00002.json").write_text("[1, 2]")
    fresh = filters()
    with caplog.at_level("WARNING"):
        resumed = Pipeline("text", fresh, out_dir=out, part_size=4).run(make_docs())
    assert resumed == ref
    assert sum("damaged commit record" in r.getMessage() for r in caplog.records) == 2
    for kind in ("kept", "rejects"):
        for p in sorted((tmp_path / "ref" / kind / "text").glob("*.jsonl")):
            assert (out / kind / "text" / p.name).read_bytes() == p.read_bytes()


def test_a_damaged_triples_meta_builds_the_triples_again(tmp_path, caplog):
    from data_prep.augment import AugmentConfig
    from data_prep.triples import build_triples

    build_triples(tmp_path, AugmentConfig())
    meta = tmp_path / "triples" / "meta.json"
    first = meta.read_text()
    meta.write_text('{"image-text-co')
    with caplog.at_level("WARNING"):
        build_triples(tmp_path, AugmentConfig())
    assert "is damaged" in caplog.text and meta.read_text() == first
