"""Readers: every input item becomes exactly one Document; bad items carry a read_error instead of raising."""

import csv
import gzip
import io
import json
import tarfile

import pytest

from data_prep.errors import PrepError
from data_prep.readers import check_paths
from data_prep.readers.code import iter_code_documents
from data_prep.readers.image import iter_image_documents
from data_prep.readers.text import iter_text_documents


def errors(docs):
    return [d.metadata.get("read_error") for d in docs]


def test_jsonl_bad_lines(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(
        b'{"text": "good one", "id": "g1", "lang": "en"}\n\n{"text": "caf\xe9"}\n{broken\n'
        b'{"title": "x"}\n{"text": 5}\n[1, 2]\n{"text": "good two"}\n'
    )
    docs = list(iter_text_documents([p], id_field="id"))
    assert errors(docs) == [None, "non_utf8", "bad_json", "missing_field", "bad_field_type", "bad_json", None]
    assert docs[0].id == "g1" and docs[0].metadata == {"lang": "en"}
    assert docs[-1].id == "a.jsonl:8" and docs[-1].text == "good two"


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    lines = b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200))
    data = gzip.compress(lines)
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    docs = list(iter_text_documents([p]))
    assert 0 < len(docs) - 1 < 200
    assert errors(docs)[-1] == "truncated_file" and set(errors(docs)[:-1]) == {None}


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "three"], "doc": ["a", "b", "c"]}), tmp_path / "x.parquet")
    docs = list(iter_text_documents([tmp_path / "x.parquet"], id_field="doc"))
    assert [d.id for d in docs] == ["a", "b", "c"] and errors(docs) == [None, "missing_field", None]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    assert errors(iter_text_documents([tmp_path / "bad.parquet"])) == ["corrupt_file"]
    assert errors(iter_text_documents([tmp_path / "x.parquet"], text_field="body")) == ["missing_field"]


def test_text_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text\n")
    (tmp_path / "sub" / "b.md").write_text("# markdown\n")
    (tmp_path / "sub" / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "sub" / "nul.txt").write_bytes(b"abc\x00def")
    (tmp_path / "sub" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref\n")  # VCS folders are not inputs
    (tmp_path / "big.txt").write_text("x" * 2000)
    docs = list(iter_text_documents([tmp_path], max_file_bytes=1000))
    by_id = {d.id.split("/", 1)[1]: d.metadata.get("read_error") for d in docs}
    assert by_id == {
        "a.txt": None,
        "big.txt": "file_too_large",
        "sub/b.md": None,
        "sub/image.png": "unsupported_file",
        "sub/latin.txt": "non_utf8",
        "sub/nul.txt": "binary",
    }


def test_code_tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("\ufeffx = 1\n")
    (tmp_path / "pkg" / "blob.so").write_bytes(b"\x7fELF\x00\x00")
    (tmp_path / "pkg" / "old.py").write_bytes(b"# \xe9\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\x00")
    docs = list(iter_code_documents([tmp_path], max_file_bytes=1 << 20))
    assert [(d.metadata["path"].split("/", 1)[1], d.metadata.get("read_error")) for d in docs] == [
        ("pkg/blob.so", "binary"),
        ("pkg/m.py", None),
        ("pkg/old.py", "non_utf8"),
    ]
    assert docs[1].text == "x = 1\n"  # BOM stripped


def test_output_folder_inside_an_input_is_skipped(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "runs" / "prep" / "kept").mkdir(parents=True)
    (tmp_path / "runs" / "prep" / "kept" / "part.jsonl").write_text("{}\n")
    docs = list(iter_code_documents([tmp_path], exclude=(tmp_path / "runs" / "prep",)))
    assert [d.metadata["path"].split("/", 1)[1] for d in docs] == ["src/a.py"]


def test_image_folder_with_sidecars(tmp_path, png):
    (tmp_path / "a.png").write_bytes(png)
    (tmp_path / "a.txt").write_text("a red square")
    (tmp_path / "b.png").write_bytes(png)  # no caption
    (tmp_path / "readme.md").write_text("hi")
    docs = list(iter_image_documents([tmp_path]))
    assert [(d.id.split("/", 1)[1], d.text, d.metadata.get("read_error")) for d in docs] == [
        ("a.png", "a red square", None),
        ("b.png", "", "missing_caption"),
        ("readme.md", "", "unsupported_file"),
    ]
    assert docs[0].data == png


def test_csv_manifest(tmp_path, png):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "code"])
        w.writerow(["img/a.png", "a red square", "draw.rectangle(...)"])
        w.writerow(["img/missing.png", "nothing", ""])
    docs = list(iter_image_documents([tmp_path / "m.csv"]))
    assert errors(docs) == [None, "missing_file"]
    assert docs[0].metadata["code"] == "draw.rectangle(...)" and "code" not in docs[1].metadata


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_webdataset_tar(tmp_path, png):
    data = _tar(
        [
            ("s/000.png", png),
            ("s/000.txt", b"a red square"),
            ("s/001.png", png),
            ("s/001.json", json.dumps({"caption": "red", "code": "x"}).encode()),
            ("s/002.png", png),
            ("s/003.txt", b"caption without image"),
        ]
    )
    (tmp_path / "shard.tar").write_bytes(data)
    docs = list(iter_image_documents([tmp_path / "shard.tar"]))
    assert [(d.text, d.metadata.get("read_error")) for d in docs] == [
        ("a red square", None),
        ("red", None),
        ("", "missing_caption"),
        ("caption without image", "missing_image"),
    ]
    assert docs[1].metadata["code"] == "x"
    (tmp_path / "cut.tar").write_bytes(data[:1500])
    cut = list(iter_image_documents([tmp_path / "cut.tar"]))
    assert errors(cut)[-1] == "corrupt_archive"


def test_missing_paths_are_user_errors(tmp_path):
    with pytest.raises(PrepError, match=r"--text .*nope: path does not exist; pass"):
        check_paths("--text", [tmp_path / "nope"], "pass an existing file")
