"""Converters from public review dumps (mrhp.data.dumps): tiny files written here for every format, with the
defects real dumps have (style-variant duplicates, vote strings, absent votes, malformed lines, wrong encodings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import write_lines

from mrhp.cli import main
from mrhp.data.dump_formats import _parse_votes, parse_column_mapping
from mrhp.data.dump_pipeline import merge_variants
from mrhp.data.dumps import read_dump
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.data.records import votes_to_level
from mrhp.errors import DataError, MrhpError

ALL_TRAIN = (1.0, 0.0, 0.0)


def amazon2018_rows() -> list[dict]:
    def review(asin, reviewer, text, **extra):
        return {"overall": 5.0, "reviewerID": reviewer, "asin": asin, "unixReviewTime": 1441324800,
                "summary": "Five Stars", "reviewText": text, "style": {"Size:": " M"}, **extra}

    return [
        # One review repeated under two style-variant asins (A1, A2) and twice under A1.
        review("A1", "U1", "Great product and price!", vote="1,024", image=["https://img/1.jpg"]),
        review("A2", "U1", "Great product and price!", vote="1,024", image=["https://img/1.jpg"]),
        review("A1", "U1", "Great product and price!", vote="1,024", image=["https://img/1.jpg"]),
        review("A2", "U2", "Runs small.", vote="3"),
        review("A1", "U3", "Fine."),  # no vote field: 0 votes
        review("B1", "U4", "Only review of B1.", vote="2"),
    ]


def test_votes_and_levels():
    assert [_parse_votes(v, Path("f"), 1, "vote") for v in ("12", " 1,024 ", 7, 3.0, "0")] == [12, 1024, 7, 3, 0]
    for bad in ("1,02", "-1", "1.5", True, -2, 2.5, "twelve"):
        with pytest.raises(DataError, match="f, line 1, field 'vote'"):
            _parse_votes(bad, Path("f"), 1, "vote")
    # log2: 0 -> 0, 1-2 -> 1, 3-6 -> 2, 7-14 -> 3, >= 15 -> 4
    assert [votes_to_level(v) for v in (0, 1, 2, 3, 6, 7, 14, 15, 1024)] == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [votes_to_level(v, "linear-cap") for v in (0, 3, 9)] == [0, 3, 4]


def test_amazon2018_dedup_merge_votes_and_image_refs(tmp_path: Path):
    reviews = write_lines(tmp_path / "Fashion_5.json.gz", amazon2018_rows(), compress=True)
    metadata = write_lines(tmp_path / "meta.json", [
        {"asin": "A2", "title": "Kids shoe", "description": ["Rubber sole,", "canvas"], "imageURL": ["https://p/2.jpg"]},
        {"asin": "B1", "title": "Hat", "description": []},
    ])
    raw = read_dump("amazon2018", reviews, metadata=metadata, fractions=ALL_TRAIN, min_reviews=1)
    train = raw.splits["train"]
    # A1 and A2 share a review: one product "A1" (smallest id) holding each review once, in file order.
    assert [p.id for p in train.products] == ["A1", "B1"]
    assert [(r.product_id, r.label) for r in train.reviews] == [("A1", 4), ("A1", 2), ("A1", 0), ("B1", 1)]
    first = train.reviews[0]
    assert first.text == "Five Stars\nGreat product and price!" and first.rating == 5.0
    assert first.image_refs == ("https://img/1.jpg",)
    # The merged product takes the metadata of its smallest id that has some (A1 has none, A2 does).
    assert train.products[0].text == "Kids shoe\nRubber sole, canvas"
    assert train.products[0].image_refs == ("https://p/2.jpg",)
    counts = raw.notes["dump"]["counts"]
    assert counts["duplicate review copies removed"] == 2
    assert counts["products merged from several ids (variants)"] == 1
    assert counts["reviews without a vote field (0 votes)"] == 1
    assert "cannot be fetched offline" in raw.notes["dump"]["image_note"]

    out = tmp_path / "prepared"
    report = prepare_dataset(raw, out, min_count=1)
    split = PreparedDataset.open(out).split("train")
    assert split.image_refs("review")[0] == ["https://img/1.jpg"] and split.image_refs("product")[1] == []
    assert np.array_equal(split.review_rating, [5.0, 5.0, 5.0, 5.0])
    assert report["splits"]["train"]["images"]["review"]["with_image_refs_only"] == 1
    assert split.product_image.tolist() == [-1, -1]  # references are not features


def test_merge_variants_keeps_largest_votes_and_counts_conflicts(tmp_path: Path):
    from mrhp.data.dump_pipeline import DumpReview

    key = ("U", "1", "s", "t")
    reviews = [DumpReview("P2", "r1", "t", 1, None, (), "f line 1", key),
               DumpReview("P1", "r2", "t", 5, None, (), "f line 2", key),
               DumpReview("P3", "r3", "u", 0, None, (), "f line 3", None)]
    kept, product_of, counts = merge_variants(reviews)
    assert [(r.product_id, r.review_id, r.votes) for r in kept] == [("P1", "r1", 5), ("P3", "r3", 0)]
    assert product_of == {"P2": "P1", "P1": "P1", "P3": "P3"}
    assert counts["duplicated reviews whose copies have different votes (largest kept)"] == 1


def test_amazon2014_helpful_pairs_and_python_literal_lines(tmp_path: Path):
    path = write_lines(tmp_path / "reviews_5.json", [
        {"reviewerID": "U1", "asin": "X", "helpful": [3, 5], "reviewText": "Solid<br />pan.", "summary": "Good",
         "overall": 4.0, "unixReviewTime": 1},
        "{'reviewerID': 'U2', 'asin': 'X', 'helpful': [0, 0], 'reviewText': 'Meh', 'summary': 'ok', 'overall': 2.0, "
        "'unixReviewTime': 2}",
    ])
    raw = read_dump("amazon2014", path, fractions=ALL_TRAIN)
    reviews = raw.splits["train"].reviews
    assert [(r.label, r.rating) for r in reviews] == [(2, 4.0), (0, 2.0)]
    assert reviews[0].text == "Good\nSolid\npan."
    bad = write_lines(tmp_path / "bad.json", [{"reviewerID": "U", "asin": "X", "helpful": [1]}])
    with pytest.raises(DataError, match=r"bad.json, line 1, field 'helpful'"):
        read_dump("amazon2014", bad, fractions=ALL_TRAIN)


FINEFOOD_HEADER = "Id,ProductId,UserId,ProfileName,HelpfulnessNumerator,HelpfulnessDenominator,Score,Time,Summary,Text\r\n"


def test_finefood_csv_multiline_fields_duplicates_and_filters(tmp_path: Path):
    rows = [
        '1,P1,U1,"Ann ""A""",4,5,5,100,Great,"Tasty.<br /><br />Would buy, again."\r\n',
        "2,P1,U2,Bob,0,0,1,101,Bad,Stale\r\n",
        '3,P1,U3,Cy,20,22,,102,Long,"Line one\r\nline two"\r\n',
        "4,P2,U4,Di,0,0,5,103,Ok,Fine\r\n",  # P2: one review -> dropped by min_reviews
        "5,P3,U5,Ed,1,1,5,104,Same,Same level\r\n",
        "6,P3,U6,Fa,2,2,4,105,Same,Same level too\r\n",  # P3: every review level 1 -> single level
        "7,P4,U1,Ann,1,1,5,100,Great,\"Tasty.<br /><br />Would buy, again.\"\r\n",  # U1's review again on P4
    ]
    path = tmp_path / "Reviews.csv"
    path.write_text(FINEFOOD_HEADER + "".join(rows), encoding="utf-8", newline="")
    raw = read_dump("finefood", path, fractions=ALL_TRAIN, drop_single_level=True)
    train = raw.splits["train"]
    # P4 shares U1's review with P1: merged into P1, the copy dropped, the larger vote count (4) kept.
    assert [p.id for p in train.products] == ["P1"] and [p.text for p in train.products] == [""]
    assert [(r.id, r.label) for r in train.reviews] == [("1", 2), ("2", 0), ("3", 4)]
    assert train.reviews[0].text == "Great\nTasty.\n\nWould buy, again."
    assert train.reviews[2].text == "Long\nLine one\r\nline two" and train.reviews[2].rating is None
    dump = raw.notes["dump"]
    assert dump["products_dropped_min_reviews"] == 1 and dump["single_level_products_dropped"] == 1
    assert dump["counts"]["reviews without a Score (rating unknown)"] == 1
    assert dump["splits"]["train"]["rankable_products"] == 1


def test_finefood_errors_and_lenient_skips(tmp_path: Path):
    path = tmp_path / "Reviews.csv"
    path.write_bytes((FINEFOOD_HEADER + "1,P1,U1,A,1,1,5,1,S,T\r\n2,P1,U2,B,x,1,5,1,S,T\r\n"
                      "3,P1,U3,C,1,1,5,1,S\r\n").encode() + b"4,P1,U4,D,1,1,5,1,S,caf\xe9\r\n5,P1,U5,E,3,3,4,1,S,T2\r\n")
    with pytest.raises(DataError, match=r"Reviews.csv, line 3, field 'HelpfulnessNumerator'"):
        read_dump("finefood", path, fractions=ALL_TRAIN)
    raw = read_dump("finefood", path, fractions=ALL_TRAIN, lenient=True)
    assert [r.id for r in raw.splits["train"].reviews] == ["1", "5"]
    assert raw.notes["dump"]["skipped"] == {"bad HelpfulnessNumerator": 1, "wrong field count": 1, "not UTF-8": 1}
    assert any("line 5" in example for example in raw.notes["dump"]["skipped_listed"])
    # Latin-1 text alone (no other defect) is an error naming the line.
    latin = tmp_path / "latin.csv"
    latin.write_bytes(FINEFOOD_HEADER.encode() + b"1,P1,U1,A,1,1,5,1,S,caf\xe9\r\n")
    with pytest.raises(DataError, match=r"latin.csv, line 2: not UTF-8"):
        read_dump("finefood", latin, fractions=ALL_TRAIN)
    missing = tmp_path / "missing.csv"
    missing.write_text("Id,ProductId,Text\n1,P1,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"missing.csv, line 1: missing column\(s\) 'UserId'"):
        read_dump("finefood", missing, fractions=ALL_TRAIN)


def test_malformed_json_line_strict_and_lenient(tmp_path: Path):
    rows = amazon2018_rows()
    lines = [json.dumps(r) for r in rows[:2]] + ['{"asin": "A1", "vote": "2"'] + [json.dumps(r) for r in rows[2:]]
    path = write_lines(tmp_path / "r.json", lines)
    with pytest.raises(DataError, match=r"r.json, line 3: invalid JSON"):
        read_dump("amazon2018", path, fractions=ALL_TRAIN)
    raw = read_dump("amazon2018", path, fractions=ALL_TRAIN, lenient=True, min_reviews=1)
    assert raw.notes["dump"]["skipped"] == {"invalid JSON": 1}
    assert len(raw.splits["train"].reviews) == 4


def test_yelp_business_text_and_unknown_business(tmp_path: Path):
    reviews = write_lines(tmp_path / "review.json", [
        {"review_id": "r1", "business_id": "b1", "text": "Great tacos.", "useful": 7, "stars": 5},
        {"review_id": "r2", "business_id": "b1", "text": "Slow.", "useful": 0, "stars": 2},
        {"review_id": "r3", "business_id": "zz", "text": "Where?", "useful": 1, "stars": 3},
    ])
    business = write_lines(tmp_path / "business.json", [{"business_id": "b1", "name": "Taco Spot",
                                                         "categories": "Mexican, Restaurants"}])
    with pytest.raises(DataError, match=r"review.json, line 3, field 'business_id': business 'zz' is not in"):
        read_dump("yelp", reviews, business=business, fractions=ALL_TRAIN)
    raw = read_dump("yelp", reviews, business=business, fractions=ALL_TRAIN, lenient=True)
    train = raw.splits["train"]
    assert [(p.id, p.text) for p in train.products] == [("b1", "Taco Spot\nMexican, Restaurants")]
    assert [(r.id, r.label, r.rating) for r in train.reviews] == [("r1", 3, 5.0), ("r2", 0, 2.0)]
    assert raw.notes["dump"]["skipped"] == {"unknown business": 1}
    dup = write_lines(tmp_path / "dup.json", [{"review_id": "r1", "business_id": "b", "text": "", "useful": 0}] * 2)
    with pytest.raises(DataError, match=r"dup.json, line 2, field 'review_id': duplicate review id 'r1'"):
        read_dump("yelp", dup, fractions=ALL_TRAIN)


def test_csv_column_mapping_for_csv_and_jsonl(tmp_path: Path):
    mapping = parse_column_mapping(["product=item", "review=rid", "text=title,body", "votes=helpful",
                                    "rating=stars", "product_text=item_name", "images=pics"])
    assert mapping.text == ("title", "body")
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("item,rid,title,body,helpful,stars,item_name,pics\n"
                        'i1,a,Nice,"Works, well",15,4.5,Kettle,u1.jpg|u2.jpg\n'
                        "i1,b,,Broke,0,,Kettle,\n", encoding="utf-8")
    raw = read_dump("csv", csv_path, columns=mapping, fractions=ALL_TRAIN)
    train = raw.splits["train"]
    assert [(r.id, r.text, r.label, r.rating, r.image_refs) for r in train.reviews] == [
        ("a", "Nice\nWorks, well", 4, 4.5, ("u1.jpg", "u2.jpg")), ("b", "Broke", 0, None, ())]
    assert train.products[0].text == "Kettle"
    jsonl_path = write_lines(tmp_path / "mine.jsonl", [
        {"item": "i1", "title": "t", "helpful": "1,500", "item_name": "K"},
        {"item": "i1", "title": "u", "helpful": 0, "item_name": "Other"},
    ])
    simple = parse_column_mapping(["product=item", "text=title", "votes=helpful", "product_text=item_name"])
    with pytest.raises(DataError, match=r"mine.jsonl, line 2, field 'item_name': product 'i1' has another text"):
        read_dump("csv", jsonl_path, columns=simple, fractions=ALL_TRAIN)
    raw = read_dump("csv", jsonl_path, columns=simple, fractions=ALL_TRAIN, min_reviews=1, lenient=True)
    assert [(r.id, r.label) for r in raw.splits["train"].reviews] == [("line1", 4)]
    with pytest.raises(DataError, match=r"mine.csv, line 1: missing column\(s\) 'likes'"):
        read_dump("csv", csv_path, columns=parse_column_mapping(["product=item", "text=body", "votes=likes"]),
                  fractions=ALL_TRAIN)
    for bad in (["product=item", "text=body"], ["product=item", "text=body", "votes=v", "colour=c"]):
        with pytest.raises(MrhpError, match="--columns"):
            parse_column_mapping(bad)


def test_split_by_product_is_seeded_and_disjoint(tmp_path: Path):
    rows = [{"review_id": f"r{p}-{k}", "business_id": f"b{p:02d}", "text": "x " * k, "useful": k, "stars": 3}
            for p in range(20) for k in range(3)]
    path = write_lines(tmp_path / "review.json", rows)
    a = read_dump("yelp", path, fractions=(0.6, 0.2, 0.2), seed=1)
    b = read_dump("yelp", path, fractions=(0.6, 0.2, 0.2), seed=1)
    c = read_dump("yelp", path, fractions=(0.6, 0.2, 0.2), seed=2)

    def ids(raw):
        return {name: sorted(p.id for p in s.products) for name, s in raw.splits.items()}

    assert ids(a) == ids(b) != ids(c)
    assert [len(v) for v in ids(a).values()] == [12, 4, 4]
    for split in a.splits.values():
        products = {p.id for p in split.products}
        assert all(r.product_id in products for r in split.reviews) and len(split.reviews) == 3 * len(products)
    assert a.notes["dump"]["splits"]["test"]["label_histogram"] == [4, 8, 0, 0, 0]  # votes 0, 1, 2 -> 0, 1, 1


def test_cli_prepare_dump_report_and_errors(tmp_path: Path, capsys):
    path = write_lines(tmp_path / "r.json", amazon2018_rows())
    out = tmp_path / "prepared"
    status = main(["prepare", "--format", "amazon2018", "--input", str(path), "--out", str(out), "--min-count", "1",
                   "--split-fractions", "1", "0", "0", "--min-reviews", "1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "converted amazon2018: 6 review records read" in printed
    assert "[train] 2 products (1 rankable" in printed and "cannot be fetched offline" in printed
    assert "rankable" in (out / "report.txt").read_text()
    fresh = tmp_path / "fresh"
    status = main(["prepare", "--format", "finefood", "--input", str(tmp_path / "none.csv"), "--out", str(fresh)])
    assert status == 2 and "none.csv" in capsys.readouterr().err
    status = main(["prepare", "--format", "csv", "--input", str(path), "--out", str(fresh)])
    assert status == 2 and "--columns is required" in capsys.readouterr().err
    # The output is checked before anything is read: an existing dataset is named, and kept.
    status = main(["prepare", "--format", "finefood", "--input", str(tmp_path / "none.csv"), "--out", str(out)])
    assert status == 2 and "is not empty" in capsys.readouterr().err and (out / "report.txt").exists()
