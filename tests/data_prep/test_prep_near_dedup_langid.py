"""MinHash near-dedup (planted near-duplicates go, distinct documents stay; across tasks, from .zst/.gz/.xz/.bz2)
and language identification on a small multilingual sample."""

import json

import numpy as np
import pytest

from data_prep.engine.dedup import find_duplicates
from data_prep.filters.gopher_quality import GopherQualityFilter
from data_prep.filters.language import LanguageFilter
from data_prep.minhash import MinHasher, MinHashParams, jaccard
from data_prep.prep import PrepConfig, run
from data_prep.sample_corpus import python_doc_chunks
from tests.data_prep.helpers import doc

MULTILINGUAL = {
    "en": "The river runs through the old town, and in the evening people walk along its banks to watch the boats "
    "that come back from the sea with the day's catch.",
    "de": "Der Fluss fließt durch die alte Stadt, und am Abend gehen die Leute an seinem Ufer spazieren, um die "
    "Boote zu beobachten, die mit dem Fang des Tages vom Meer zurückkommen.",
    "fr": "La rivière traverse la vieille ville, et le soir les gens se promènent sur ses rives pour regarder les "
    "bateaux qui reviennent de la mer avec la pêche du jour.",
    "es": "El río atraviesa el casco antiguo y por la tarde la gente pasea por sus orillas para ver los barcos que "
    "vuelven del mar con la pesca del día.",
    "it": "Il fiume attraversa la città vecchia e la sera la gente passeggia lungo le sue rive per guardare le barche "
    "che tornano dal mare con il pescato del giorno.",
    "ru": "Река течёт через старый город, и вечером люди гуляют по её берегам, чтобы посмотреть на лодки, которые "
    "возвращаются с моря с дневным уловом.",
    "zh": "河流穿过老城，傍晚人们沿着河岸散步，看着渔船带着一天的收获从海上归来。",
    "ja": "川は古い町を流れ、夕方になると人々は岸辺を散歩しながら、その日の獲物を積んで海から戻ってくる船を眺めます。",
}


def _distinct_docs(n: int) -> list[str]:
    return [text for _, text in python_doc_chunks()[:n]]


def _near_copy(text: str, every: int = 60) -> str:
    """Every ``every``-th word replaced: on these 200-260-word documents the Jaccard similarity of 5-gram shingles
    is 0.82-0.87 for every=60 and 0.84-0.90 for every=80, where 14 x 8 LSH finds a pair with probability >= 0.85
    (0.99 at 0.85); distinct documentation chunks stay below 0.55 (probability < 0.1)."""
    words = text.split()
    return " ".join("CHANGED" if i % every == every // 2 else w for i, w in enumerate(words))


def test_minhash_finds_planted_near_duplicates_and_keeps_distinct_documents():
    docs = _distinct_docs(30)
    planted = {30: 3, 31: 17, 32: 3}  # position -> original it copies (two copies of doc 3)
    texts = docs + [_near_copy(docs[i], every) for i, every in zip(planted.values(), (60, 80, 80))]
    texts.append(docs[5])  # an exact copy: exact dedup's, not near dedup's
    assert all(0.8 < jaccard(texts[p], docs[o]) < 1.0 for p, o in planted.items())
    hasher = MinHasher(MinHashParams())
    sha1 = np.array([bytes([i % 251]) * 20 if i != 33 else bytes([5]) * 20 for i in range(len(texts))], dtype="S20")
    bands = np.stack([hasher.band_keys(t) for t in texts])
    exact, near = find_duplicates(sha1, bands)
    assert np.flatnonzero(exact).tolist() == [33]
    assert np.flatnonzero(near).tolist() == sorted(planted)  # the first copy of each cluster stays


def test_near_dedup_across_tasks_from_compressed_inputs(tmp_path):
    import zstandard

    docs = _distinct_docs(13)
    files = {
        "a.jsonl.zst": docs[:6],
        "b.jsonl.gz": docs[6:12] + [_near_copy(docs[1])],
        "c.jsonl.xz": [_near_copy(docs[8], 80), docs[2]],
        "d.jsonl.bz2": [docs[12]],
    }
    for name, texts in files.items():
        data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
        if name.endswith(".zst"):
            data = zstandard.ZstdCompressor().compress(data)
        elif name.endswith(".gz"):
            import gzip

            data = gzip.compress(data)
        elif name.endswith(".bz2"):
            import bz2

            data = bz2.compress(data)
        else:
            import lzma

            data = lzma.compress(data)
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "out"
    cfg = PrepConfig(
        out=str(out),
        text=[str(tmp_path / "*.jsonl.*")],
        executor="local",
        workers=1,
        tasks=3,
        near_dedup=True,
        quality_model="none",
        vocab_size=300,
        seq_len=64,
    )
    stats = run(cfg)["modalities"]["text"]
    rejects = [json.loads(line) for p in sorted((out / "rejects" / "text").glob("*.jsonl")) for line in p.open()]
    dropped = {(r["id"], r["stage"], r["reason"]) for r in rejects if "dedup" in r["stage"]}
    assert dropped == {
        (f"{tmp_path.name}/b.jsonl.gz:7", "near_dedup", "near_duplicate"),
        (f"{tmp_path.name}/c.jsonl.xz:1", "near_dedup", "near_duplicate"),
        (f"{tmp_path.name}/c.jsonl.xz:2", "exact_dedup", "duplicate"),
    }
    assert stats["input"] == 16 and stats["stages"]["near_dedup"]["in"] == 15

    # 2 workers, the dedup split into 2 buckets: exactly the same kept documents and stats
    two = tmp_path / "out2"
    cfg.out, cfg.workers, cfg.dedup_tasks = str(two), 2, 2
    assert run(cfg)["modalities"]["text"] == stats
    kept = [
        [json.loads(line) for p in sorted((o / "kept" / "text").glob("*.jsonl")) for line in p.open()]
        for o in (out, two)
    ]
    assert kept[0] == kept[1] and len(kept[0]) == stats["kept"]


@pytest.fixture(scope="module")
def language_filter():
    return LanguageFilter()


def test_language_id_labels_a_multilingual_sample(language_filter):
    for lang, text in MULTILINGUAL.items():
        d = doc(text)
        assert language_filter.filter(d) is True
        assert d.metadata["language"] == lang and 0.5 < d.metadata["language_score"] <= 1.0, (lang, d.metadata)


def test_languages_filter_keeps_only_the_wanted_ones():
    keep = LanguageFilter(languages=["de", "en"])
    results = {lang: keep.filter(doc(text)) for lang, text in MULTILINGUAL.items()}
    assert {lang for lang, r in results.items() if r is True} == {"de", "en"}
    assert results["fr"] == (False, "language_not_wanted")


def test_stop_word_rule_applies_to_english_only(language_filter):
    german = " ".join([MULTILINGUAL["de"]] * 3)  # > 50 words, no English stop words
    assert GopherQualityFilter().filter(doc(german)) == (False, "too_few_stop_words")  # unlabelled: as English
    d = doc(german)
    language_filter.filter(d)
    assert GopherQualityFilter().filter(d) is True


@pytest.mark.parametrize("tasks, buckets", [(1, 1), (3, 2), (4, 5)])
def test_dedup_split_over_tasks_and_buckets_equals_the_single_process_reference(tmp_path, tasks, buckets):
    """Signatures per task, exact dedup per hash bucket, MinHash links per band, clusters in one task: the same
    decisions as ``find_duplicates`` over the whole corpus, whatever the task and bucket counts."""
    from data_prep.engine.dedup import DedupBuckets, NearClusters, SignatureWriter, _near_path, exact_positions
    from data_prep.engine.steps import TaskSink
    from data_prep.filters.exact_dedup import content_hash

    docs = _distinct_docs(24)
    texts = docs + [_near_copy(docs[3]), docs[7], _near_copy(docs[3], 80), docs[0], _near_copy(docs[20], 80)]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]  # copies before and after originals
    params = MinHashParams()
    cuts = np.linspace(0, len(texts), tasks + 1).astype(int)
    for t in range(tasks):
        sink = TaskSink(tmp_path, "text", [], write=False)
        SignatureWriter(tmp_path, params, sink, buckets).run(iter(doc(x) for x in texts[cuts[t] : cuts[t + 1]]), rank=t)
    for r in range(buckets + params.bands):
        DedupBuckets(tmp_path, tasks, buckets).run(rank=r)
    NearClusters(tmp_path, tasks, buckets, params.bands).run()
    exact = np.concatenate([exact_positions(tmp_path, t, buckets) + cuts[t] for t in range(tasks)])
    near = np.concatenate([np.load(_near_path(tmp_path, t)) + cuts[t] for t in range(tasks)])

    hasher = MinHasher(params)
    ref_exact, ref_near = find_duplicates(
        np.array([bytes.fromhex(content_hash(doc(x))) for x in texts], dtype="S20"),
        np.stack([hasher.band_keys(x) for x in texts]),
    )
    assert exact.tolist() == np.flatnonzero(ref_exact).tolist() and len(exact) == 2
    assert sorted(near.tolist()) == np.flatnonzero(ref_near).tolist() and len(near) == 3
