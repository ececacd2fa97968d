"""The Amazon Reviews'23 converter (``mrhp prepare --format amazon2023``) on files written here: grouping by
``parent_asin``, the metadata join, a product without metadata, malformed lines, ``--lenient``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import write_lines

from mrhp.cli import main
from mrhp.data.dumps import read_dump
from mrhp.data.prepared import PreparedDataset
from mrhp.errors import DataError, MrhpError

ALL_TRAIN = (1.0, 0.0, 0.0)


def review(parent: str, user: str, text: str, votes: object = 0, asin: str | None = None, **extra) -> dict:
    return {"rating": 4.0, "title": f"title of {user}", "text": text, "images": [], "asin": asin or parent,
            "parent_asin": parent, "user_id": user, "timestamp": 1470972512000, "helpful_vote": votes,
            "verified_purchase": True, **extra}


def reviews_rows() -> list:
    image = {"small_image_url": "https://s/1.jpg", "medium_image_url": "https://m/1.jpg",
             "large_image_url": "https://l/1.jpg", "attachment_type": "IMAGE"}
    return [
        # Two variants (asin V1, V2) of parent P1: one product.
        review("P1", "U1", "Great magazine.<br />Lots of recipes.", 15, asin="V1", images=[image]),
        review("P1", "U2", "Too many ads.", 3, asin="V2"),
        review("P1", "U2", "Too many ads.", 3, asin="V2"),  # an exact copy: collapsed
        review("P2", "U3", "Arrived late.", 0),
        review("P2", "U4", "Good value for kids.", 1),
        review("P3", "U5", "Only one review: dropped by min_reviews."),
    ]


def metadata_rows() -> list:
    return [
        {"parent_asin": "P1", "title": "Everyday Food", "description": ["Cooking magazine.", "12 issues"],
         "features": ["Print", "Monthly"],
         "images": [{"thumb": "https://t/p1.jpg", "large": "https://L/p1.jpg", "hi_res": "https://H/p1.jpg"},
                    {"thumb": "https://t/p1b.jpg", "large": "https://L/p1b.jpg", "hi_res": None}]},
        # P2 has no metadata line; an unrelated product does.
        {"parent_asin": "Q9", "title": "Unrelated", "description": []},
    ]


def test_groups_by_parent_asin_and_joins_metadata(tmp_path: Path):
    reviews = write_lines(tmp_path / "Magazine.jsonl.gz", reviews_rows(), compress=True)
    meta = write_lines(tmp_path / "meta_Magazine.jsonl", metadata_rows())
    raw = read_dump("amazon2023", reviews, metadata=meta, fractions=ALL_TRAIN)
    train = raw.splits["train"]
    assert [p.id for p in train.products] == ["P1", "P2"]
    p1, p2 = train.products
    assert p1.text == "Everyday Food\nCooking magazine. 12 issues"  # features only on request
    assert p1.image_refs == ("https://H/p1.jpg", "https://L/p1b.jpg")  # hi_res, else large
    assert p2.text == "" and p2.image_refs == ()  # no metadata line: empty product text, counted
    assert [(r.product_id, r.label, r.rating) for r in train.reviews] == [
        ("P1", 4, 4.0), ("P1", 2, 4.0), ("P2", 0, 4.0), ("P2", 1, 4.0)]
    first = train.reviews[0]
    assert first.text == "title of U1\nGreat magazine.\nLots of recipes."
    assert first.image_refs == ("https://l/1.jpg",)
    assert first.id == "P1:U1:1470972512000"
    dump = raw.notes["dump"]
    assert dump["counts"]["duplicate review copies removed"] == 1
    assert dump["counts"]["products without a metadata line (empty product text)"] == 1
    assert dump["products_dropped_min_reviews"] == 1

    with_features = read_dump("amazon2023", reviews, metadata=meta, fractions=ALL_TRAIN, metadata_features=True)
    assert with_features.splits["train"].products[0].text == "Everyday Food\nCooking magazine. 12 issues\nPrint Monthly"


def test_malformed_lines_name_file_line_and_field(tmp_path: Path):
    rows = reviews_rows()
    rows.insert(2, "{not json")
    rows.insert(4, review("P2", "U9", "bad votes", votes="many"))
    path = write_lines(tmp_path / "r.jsonl", rows)
    with pytest.raises(DataError, match=r"r\.jsonl, line 3: invalid JSON"):
        read_dump("amazon2023", path, fractions=ALL_TRAIN)
    del rows[2]
    path = write_lines(tmp_path / "r.jsonl", rows)
    with pytest.raises(DataError, match=r"r\.jsonl, line 4, field 'helpful_vote'"):
        read_dump("amazon2023", path, fractions=ALL_TRAIN)
    missing = write_lines(tmp_path / "m.jsonl", [{"title": "no parent", "helpful_vote": 1}])
    with pytest.raises(DataError, match=r"m\.jsonl, line 1, field 'parent_asin'"):
        read_dump("amazon2023", missing, fractions=ALL_TRAIN)
    bad_meta = write_lines(tmp_path / "meta.jsonl", [{"parent_asin": "P1", "description": [1, 2]}])
    with pytest.raises(DataError, match=r"meta\.jsonl, line 1, field 'description'"):
        read_dump("amazon2023", write_lines(tmp_path / "ok.jsonl", reviews_rows()), metadata=bad_meta,
                  fractions=ALL_TRAIN)


def test_lenient_skips_and_counts(tmp_path: Path):
    rows = reviews_rows()
    rows.insert(2, "{not json")
    rows.append(review("P2", "U9", "bad votes", votes=-3))
    raw = read_dump("amazon2023", write_lines(tmp_path / "r.jsonl", rows), fractions=ALL_TRAIN, lenient=True)
    dump = raw.notes["dump"]
    assert dump["skipped"] == {"invalid JSON": 1, "bad helpful_vote": 1}
    assert any("line 3" in example for example in dump["skipped_listed"])
    # Nothing that was valid is lost.
    assert len(raw.splits["train"].reviews) == 4


def test_options_are_checked(tmp_path: Path):
    path = write_lines(tmp_path / "r.jsonl", reviews_rows())
    with pytest.raises(MrhpError, match="--metadata-features is for --format amazon2023 with --metadata"):
        read_dump("amazon2023", path, metadata_features=True)
    with pytest.raises(MrhpError, match="--metadata is for"):
        read_dump("finefood", path, metadata=path)


def test_cli_prepares_a_split_dataset(tmp_path: Path):
    rows = []
    for p in range(12):  # enough products for a train/dev/test split
        rows += [review(f"P{p}", f"U{p}a", "short", 0), review(f"P{p}", f"U{p}b", "a much longer review " * 5, 20)]
    reviews = write_lines(tmp_path / "r.jsonl", rows)
    meta = write_lines(tmp_path / "meta.jsonl", [{"parent_asin": f"P{p}", "title": f"Magazine {p}"} for p in range(12)])
    out = tmp_path / "prepared"
    assert main(["prepare", "--format", "amazon2023", "--input", str(reviews), "--metadata", str(meta),
                 "--out", str(out)]) == 0
    data = PreparedDataset.open(out)
    assert set(data.splits) == {"train", "dev", "test"}
    products = {pid for name in data.splits for pid in data.split(name).product_ids}
    assert products == {f"P{p}" for p in range(12)}  # by product: each in exactly one split
    assert sum(data.split(name).num_products for name in data.splits) == 12
    assert data.meta["source"]["format"] == "amazon2023"
