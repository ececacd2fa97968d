"""The Steam reader (mrhp.data.steam), review times in every converter, the stored side features and the prepared
format's version 2 (review_time.npy, review_side.npy); tiny folders written here."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support import tiny_checkpoint_file, write_lines

from mrhp.cli import main
from mrhp.config import Config, ModelConfig, ModelInputs, config_from_dict
from mrhp.data.batching import Item, RankingList, collate, extra_side_inputs
from mrhp.data.dump_formats import parse_column_mapping
from mrhp.data.dumps import read_dump
from mrhp.data.jsonl import read_jsonl
from mrhp.data.official import review_time
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.data.records import RawDataset, RawProduct, RawReview, RawSplit
from mrhp.data.side import NO_TIME, STORED_SIDE_FEATURES, parse_side_names
from mrhp.data.steam import html_to_text
from mrhp.errors import DataError, MrhpError
from mrhp.models.checkpoint import load_checkpoint
from mrhp.models.paper import HelpfulnessModel
from mrhp.ranking.ranker import Ranker
from mrhp.studies.floors import (
    FLOOR_METHODS,
    TextSummary,
    age_scores,
    evaluate_floor,
    review_features,
    train_lambdamart,
)

ALL_TRAIN = (1.0, 0.0, 0.0)
DAY = 86_400


def steam_review(text, votes, recommends=True, created=1_500_000_000, bought=True, **extra):
    return {"recommendationid": "x", "author": {"steamid": "1", "playtime_forever": 10}, "language": "english",
            "review": text, "timestamp_created": created, "timestamp_updated": created, "voted_up": recommends,
            "votes_up": votes, "votes_funny": 99, "weighted_vote_score": "0.9", "comment_count": 0,
            "steam_purchase": bought, "received_for_free": False, "written_during_early_access": False, **extra}


def store_page(appid, **extra):
    return {"type": "game", "name": "Space <b>Game</b>", "steam_appid": appid,
            "short_description": "Fly &amp; fight.",
            "about_the_game": "<h1>About</h1><p>Trade<br>and <i>explore</i>.</p><script>var x=1;</script>",
            "header_image": "https://cdn/h.jpg",
            "screenshots": [{"id": 0, "path_thumbnail": "https://cdn/t0.jpg", "path_full": "https://cdn/s0.jpg"},
                            {"id": 1, "path_full": "https://cdn/s1.jpg"}], **extra}


def write_steam(root: Path, games: dict[str, dict], pages: dict[str, object]) -> Path:
    """review_<appid>.json per game ({id: review}) and appdetails/appID_<appid>.json per page."""
    root.mkdir(parents=True, exist_ok=True)
    for appid, reviews in games.items():
        document = {"reviews": reviews, "query_summary": {"num_reviews": len(reviews)}}
        (root / f"review_{appid}.json").write_text(json.dumps(document), encoding="utf-8")
    if pages:
        (root / "appdetails").mkdir(exist_ok=True)
    for appid, page in pages.items():
        (root / "appdetails" / f"appID_{appid}.json").write_text(json.dumps(page), encoding="utf-8")
    return root


def small_folder(root: Path) -> Path:
    return write_steam(root, {
        "10": {"101": steam_review("Great game", 3, created=1_500_000_000 + 2 * DAY),
               "102": steam_review("Bad", 0, recommends=False, created=1_500_000_000, bought=False),
               "103": steam_review("", 20, created=1_500_000_000 + DAY)},
        "7": {"201": steam_review("Fine", 1, created=1_600_000_000),
              "202": steam_review("Meh", 2, recommends=False, created=1_600_000_000)},
    }, {"10": store_page(10)})


def test_html_to_text_drops_tags_scripts_and_decodes_entities():
    assert html_to_text("<h1>About</h1><p>Trade<br>and <i>explore</i>.</p><script>x=1</script>") == \
        "About\nTrade\nand explore."
    assert html_to_text("Fly &amp; fight.   <b>now</b>") == "Fly & fight. now"
    assert html_to_text("unclosed <b attr='x'>tag") == "unclosed tag"


def test_steam_reviews_store_page_rating_time_and_counts(tmp_path: Path):
    raw = read_dump("steam", small_folder(tmp_path / "steam"), fractions=ALL_TRAIN)
    train = raw.splits["train"]
    # Products in appid order (7 before 10, not the string order), game 7 has no store page.
    assert [p.id for p in train.products] == ["7", "10"]
    assert train.products[0].text == "" and train.products[0].image_refs == ()
    assert train.products[1].text == "Space Game\nFly & fight.\nAbout\nTrade\nand explore."
    assert train.products[1].image_refs == ("https://cdn/h.jpg", "https://cdn/s0.jpg", "https://cdn/s1.jpg")
    by_id = {r.id: r for r in train.reviews}
    # votes_up -> level (log2: 3 -> 2, 0 -> 0, 20 -> 4); voted_up -> 5 / 1; timestamp_created kept in seconds.
    assert [(by_id[i].label, by_id[i].rating, by_id[i].time, by_id[i].verified) for i in ("101", "102", "103")] == [
        (2, 5.0, 1_500_000_000 + 2 * DAY, True), (0, 1.0, 1_500_000_000, False), (4, 5.0, 1_500_000_000 + DAY, True)]
    assert by_id["103"].text == ""
    counts = raw.notes["dump"]["counts"]
    assert counts["games without a store page (no product text)"] == 1
    assert counts["reviews with an empty text (kept)"] == 1
    assert raw.source["format"] == "steam"


def test_steam_store_page_as_the_api_answer_and_success_false(tmp_path: Path):
    folder = write_steam(tmp_path / "s", {"10": {"1": steam_review("a", 1)}, "11": {"2": steam_review("b", 2)}},
                         {"10": {"10": {"success": True, "data": store_page(10)}},
                          "11": {"11": {"success": False}}})
    raw = read_dump("steam", folder, fractions=ALL_TRAIN, min_reviews=1)
    texts = {p.id: p.text for p in raw.splits["train"].products}
    assert texts["10"].startswith("Space Game") and texts["11"] == ""
    assert raw.notes["dump"]["counts"]["store pages that say success: false (no product text)"] == 1


@pytest.mark.parametrize("document, message", [
    ([{"review": "x"}], "not a Steam review dump.*found list"),
    ({"query_summary": {}}, "not a Steam review dump.*found keys query_summary"),
    ({"reviews": [1, 2]}, "not a Steam review dump"),
])
def test_a_file_that_is_not_a_review_dump_is_always_an_error(tmp_path: Path, document, message):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "review_5.json").write_text(json.dumps(document), encoding="utf-8")
    for lenient in (False, True):
        with pytest.raises(DataError, match=f"review_5.json, field 'reviews': {message}"):
            read_dump("steam", folder, lenient=lenient)


def test_appid_mismatch_missing_review_bad_bytes_and_lenient(tmp_path: Path):
    folder = write_steam(tmp_path / "a", {"10": {"1": steam_review("a", 1), "2": steam_review("b", 2)}},
                         {"10": store_page(11)})
    with pytest.raises(DataError, match=r"appID_10.json, record data, field 'steam_appid': store page of app 11, "
                                        r"but its review file is review_10.json"):
        read_dump("steam", folder)
    lenient = read_dump("steam", folder, lenient=True, fractions=ALL_TRAIN)
    assert lenient.notes["dump"]["skipped"] == {"appid mismatch": 1}
    assert lenient.splits["train"].products[0].text == ""

    missing = steam_review("a", 1)
    del missing["review"]
    folder = write_steam(tmp_path / "b", {"10": {"1": missing, "2": steam_review("b", 2), "3": steam_review("c", 0)}},
                         {})
    with pytest.raises(DataError, match=r"review_10.json, record 1, field 'review': missing required field"):
        read_dump("steam", folder)
    lenient = read_dump("steam", folder, lenient=True, fractions=ALL_TRAIN)
    assert lenient.notes["dump"]["skipped"] == {"missing review": 1}
    assert [r.id for r in lenient.splits["train"].reviews] == ["2", "3"]

    bad = steam_review("b", 2, voted_up="yes")
    folder = write_steam(tmp_path / "c", {"10": {"1": steam_review("a", 1), "2": bad}}, {})
    with pytest.raises(DataError, match=r"record 2, field 'voted_up': expected true or false"):
        read_dump("steam", folder)

    folder = write_steam(tmp_path / "d", {"10": {"1": steam_review("a", 1), "2": steam_review("b", 2)}}, {})
    path = folder / "review_10.json"
    path.write_bytes(b'{"reviews": {\n"1": {"review": "caf\xe9"}}}')
    with pytest.raises(DataError, match=r"review_10.json, line 2: not UTF-8"):
        read_dump("steam", folder)

    with pytest.raises(DataError, match="no review_<appid>.json file"):
        read_dump("steam", tmp_path / "a" / "appdetails")


def test_cli_prepare_steam_writes_times_and_side_features_and_refuses_bad_input(tmp_path: Path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", "--format", "steam", "--input", str(small_folder(tmp_path / "s")), "--out", str(out),
                 "--min-count", "1", "--split-fractions", "1", "0", "0"]) == 0
    printed = capsys.readouterr().out
    assert "games without a store page (no product text): 1" in printed
    assert "review times: 5 of 5 known, 2017-07-14 to 2020-09-13 (UTC)" in printed
    dataset = PreparedDataset.open(out)
    assert dataset.meta["version"] == 2 and dataset.meta["side_features"] == list(STORED_SIDE_FEATURES)
    train = dataset.split("train")
    assert train.review_ids == ["201", "202", "101", "102", "103"]
    assert train.review_time.tolist() == [1_600_000_000, 1_600_000_000, 1_500_000_000 + 2 * DAY, 1_500_000_000,
                                          1_500_000_000 + DAY]
    side = dict(zip(STORED_SIDE_FEATURES, train.review_side.T))
    # Game 7: two reviews at one time share rank 0; game 10: 102 oldest, then 103, then 101.
    assert side["age_rank"].tolist() == [0, 0, 2, 0, 1]
    assert side["age"].tolist() == [0, 0, 1, 0, 0.5]
    assert side["verified"].tolist() == [1, 1, 1, 0, 1]
    assert side["has_images"].tolist() == [0, 0, 0, 0, 0]
    # Ratings 5, 1 (mean 3) and 5, 1, 5 (mean 11/3).
    np.testing.assert_allclose(side["rating_deviation"], [2, -2, 5 - 11 / 3, 1 - 11 / 3, 5 - 11 / 3], rtol=1e-6)

    missing = steam_review("a", 1)
    del missing["review"]
    bad = write_steam(tmp_path / "bad", {"10": {"1": missing, "2": steam_review("b", 1)}}, {})
    fresh = tmp_path / "fresh"
    assert main(["prepare", "--format", "steam", "--input", str(bad), "--out", str(fresh)]) == 2
    assert "field 'review'" in capsys.readouterr().err
    assert not fresh.exists() and not list(tmp_path.glob(".fresh*"))


def test_times_of_the_other_converters(tmp_path: Path):
    a23 = write_lines(tmp_path / "a23.jsonl", [
        {"parent_asin": "P", "user_id": "U1", "timestamp": 1_588_615_855_070, "helpful_vote": 1, "text": "a",
         "verified_purchase": True, "rating": 4},
        {"parent_asin": "P", "user_id": "U2", "helpful_vote": 0, "text": "b", "rating": 2}])
    raw = read_dump("amazon2023", a23, fractions=ALL_TRAIN)
    assert [(r.time, r.verified) for r in raw.splits["train"].reviews] == [(1_588_615_855, True), (None, None)]
    assert raw.notes["dump"]["counts"]["reviews without a timestamp (time unknown)"] == 1

    a18 = write_lines(tmp_path / "a18.json", [
        {"asin": "A", "reviewerID": "U1", "unixReviewTime": 1441324800, "reviewText": "x", "verified": False},
        {"asin": "A", "reviewerID": "U2", "unixReviewTime": "1441324801", "reviewText": "y", "vote": "2"}])
    raw = read_dump("amazon2018", a18, fractions=ALL_TRAIN)
    assert [(r.time, r.verified) for r in raw.splits["train"].reviews] == [(1441324800, False), (1441324801, None)]

    food = tmp_path / "Reviews.csv"
    food.write_text("Id,ProductId,UserId,ProfileName,HelpfulnessNumerator,HelpfulnessDenominator,Score,Time,"
                    "Summary,Text\n1,B1,U1,n,1,1,5,1303862400,s,t\n2,B1,U2,n,0,0,4,1346976000,s,u\n",
                    encoding="utf-8")
    raw = read_dump("finefood", food, fractions=ALL_TRAIN)
    assert [r.time for r in raw.splits["train"].reviews] == [1303862400, 1346976000]

    table = tmp_path / "t.csv"
    table.write_text("p,body,v,when\nP,a,1,100\nP,b,0,\n", encoding="utf-8")
    columns = parse_column_mapping(["product=p", "text=body", "votes=v", "time=when"])
    raw = read_dump("csv", table, columns=columns, fractions=ALL_TRAIN)
    assert [r.time for r in raw.splits["train"].reviews] == [100, None]
    table.write_text("p,body,v,when\nP,a,1,yesterday\nP,b,0,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t.csv, line 2, field 'when': expected a time"):
        read_dump("csv", table, columns=columns, fractions=ALL_TRAIN)

    yelp = write_lines(tmp_path / "y.json", [
        {"review_id": "r1", "business_id": "b", "text": "t", "useful": 1, "stars": 4, "date": "1970-01-02 00:00:10"},
        {"review_id": "r2", "business_id": "b", "text": "t", "useful": 0, "stars": 4}])
    raw = read_dump("yelp", yelp, fractions=ALL_TRAIN)
    assert [r.time for r in raw.splits["train"].reviews] == [DAY + 10, None]


def test_version_1_datasets_still_open_with_unknown_times(tmp_path: Path):
    table = tmp_path / "t.csv"
    table.write_text("p,body,v,when\nP,a b,1,100\nP,b c,0,\n", encoding="utf-8")
    raw = read_dump("csv", table, columns=parse_column_mapping(["product=p", "text=body", "votes=v", "time=when"]),
                    fractions=ALL_TRAIN)
    out = tmp_path / "prepared"
    prepare_dataset(raw, out, min_count=1)
    split = PreparedDataset.open(out).split("train")
    assert split.review_time.tolist() == [100, NO_TIME]
    # What a version 1 dataset looks like: no times, no side features, no side feature names.
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    meta["version"] = 1
    del meta["side_features"]
    (out / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    (out / "train" / "review_time.npy").unlink()
    (out / "train" / "review_side.npy").unlink()
    old = PreparedDataset.open(out).split("train")
    assert old.review_time.tolist() == [NO_TIME, NO_TIME]
    assert old.review_side.shape == (2, len(STORED_SIDE_FEATURES)) and np.isnan(old.review_side).all()
    meta["version"] = 3
    (out / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="version 3 is not supported \\(expected 1 or 2\\)"):
        PreparedDataset.open(out)


def test_official_review_time_spellings():
    assert [review_time(v) for v in (1441324800, "1441324800", 1441324800123, 1441324800.0, "06 15, 2015",
                                     "2015-06-15", None, "soon", True, -5)] == [
        1441324800, 1441324800, 1441324800, 1441324800, 1434326400, 1434326400, None, None, None, None]


def test_jsonl_optional_time_in_seconds(tmp_path: Path):
    products = write_lines(tmp_path / "products.jsonl", [{"product_id": "P", "text": "pot", "split": "train"}])
    reviews = write_lines(tmp_path / "reviews.jsonl", [
        {"review_id": "R1", "product_id": "P", "text": "a", "votes": 1, "time": 1700000000},
        {"review_id": "R2", "product_id": "P", "text": "b", "votes": 0}])
    raw = read_jsonl(products, reviews)
    assert [r.time for r in raw.splits["train"].reviews] == [1700000000, None]
    write_lines(reviews, [{"review_id": "R1", "product_id": "P", "text": "a", "votes": 1, "time": "2023"}])
    with pytest.raises(DataError, match=r"reviews.jsonl, line 1, field 'time': expected an integer"):
        read_jsonl(products, reviews)


def timed_rows() -> list[dict]:
    """Amazon'23 rows: product P has reviews on days 1..6, Q on days 2, 5 and 6 (timestamps in ms)."""
    def row(product, user, day, votes):
        return {"parent_asin": product, "user_id": user, "timestamp": (day * DAY) * 1000, "helpful_vote": votes,
                "text": f"{product} {user}", "rating": 5}

    return [row("P", f"u{d}", d, d % 3) for d in range(1, 7)] + [row("Q", "a", 2, 0), row("Q", "b", 5, 4),
                                                                   row("Q", "c", 6, 1)]


def test_split_by_time_uses_global_cutoffs_and_drops_short_lists(tmp_path: Path):
    path = write_lines(tmp_path / "a.jsonl", timed_rows())
    raw = read_dump("amazon2023", path, split_by="time", fractions=(0.5, 0.25, 0.25))
    # 9 reviews: test = the newest round(2.25) = 2 reviews (both of day 6), dev the next 2 (both of day 5). A
    # per-product split would instead give each product its own newest reviews.
    assert raw.notes["dump"]["time_cutoffs"] == {"dev": "1970-01-06 00:00:00", "test": "1970-01-07 00:00:00"}
    # Each product's part of test holds one review: too short to rank (min_reviews 2), so test is empty and both
    # lists are counted; dev likewise. Train keeps days 1-4 of P and day 2 of Q (a list of one: dropped too).
    assert set(raw.splits) == {"train"}
    assert [r.id for r in raw.splits["train"].reviews] == [f"P:u{d}:{d * DAY * 1000}" for d in range(1, 5)]
    assert raw.notes["dump"]["split_lists_dropped"] == 5
    assert raw.notes["dump"]["reviews_dropped_in_split_lists"] == 5


def test_split_by_time_keeps_products_in_several_splits(tmp_path: Path):
    path = write_lines(tmp_path / "a.jsonl", timed_rows())
    raw = read_dump("amazon2023", path, split_by="time", fractions=(0.3, 0.3, 0.4), min_reviews=1)
    # round(3.6) = 4 newest -> test from day 5 (P u5, P u6, Q b, Q c); round(2.7) = 3 next -> the dev cut-off is
    # the time of the 7th newest review, day 2, and both day-2 reviews go to dev (one moment is never split).
    times = {name: sorted(r.time // DAY for r in s.reviews) for name, s in raw.splits.items()}
    assert times == {"train": [1], "dev": [2, 2, 3, 4], "test": [5, 5, 6, 6]}
    assert [p.id for p in raw.splits["test"].products] == ["P", "Q"]
    # Age ranks count all of a product's reviews, whatever their split: P's day-5 review has 4 older ones.
    out = tmp_path / "prepared"
    prepare_dataset(raw, out, min_count=1)
    test = PreparedDataset.open(out).split("test")
    assert dict(zip(test.review_ids, test.review_side[:, 0].tolist())) == {
        f"P:u5:{5 * DAY * 1000}": 4, f"P:u6:{6 * DAY * 1000}": 5, f"Q:b:{5 * DAY * 1000}": 1,
        f"Q:c:{6 * DAY * 1000}": 2}


def test_split_by_time_needs_times_and_dump_date_drops_young_reviews(tmp_path: Path, capsys):
    rows = timed_rows()
    del rows[3]["timestamp"]
    path = write_lines(tmp_path / "a.jsonl", rows)
    with pytest.raises(DataError, match=r"a.jsonl line 4: --split-by time needs every review's time"):
        read_dump("amazon2023", path, split_by="time")
    path = write_lines(tmp_path / "b.jsonl", timed_rows())
    # Dump collected on day 7 (1970-01-08): reviews of days 6 and 5 are younger than 2.5 days and left out.
    raw = read_dump("amazon2023", path, dump_date=7 * DAY, min_review_age_days=2.5, fractions=ALL_TRAIN,
                    min_reviews=1)
    assert sorted(r.time // DAY for r in raw.splits["train"].reviews) == [1, 2, 2, 3, 4]
    assert raw.notes["dump"]["counts"]["reviews younger than 2.5 days at the dump date (dropped)"] == 4
    with pytest.raises(DataError, match=r"b.jsonl line 6: written 1970-01-07 00:00:00 UTC, after --dump-date"):
        read_dump("amazon2023", path, dump_date=5 * DAY + 1)
    out = tmp_path / "out"
    assert main(["prepare", "--format", "amazon2023", "--input", str(path), "--out", str(out), "--split-by", "time",
                 "--split-fractions", "0.3", "0.3", "0.4", "--min-reviews", "1", "--dump-date", "1970-01-08",
                 "--min-review-age", "0", "--min-count", "1"]) == 0
    assert "split by time (UTC): dev from 1970-01-03 00:00:00, test from 1970-01-06 00:00:00" in capsys.readouterr().out
    assert main(["prepare", "--format", "amazon2023", "--input", str(path), "--out", str(tmp_path / "x"),
                 "--min-review-age", "5"]) == 2
    assert "--min-review-age needs --dump-date" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--format", "amazon2023", "--input", str(path), "--out", str(tmp_path / "x"),
              "--dump-date", "8 Jan 1970"])
    assert exit_.value.code == 2
    assert "expected a date YYYY-MM-DD" in capsys.readouterr().err


def side_model(**overrides):
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=8, embedding_dim=8, num_heads=2, interaction_layers=1, feedforward_size=16,
                         dropout=0.0, **overrides)
    return HelpfulnessModel(config, ModelInputs(vocab_size=40, image_dim=4, embedding_dim=8)).eval()


def side_batch(stored: list[np.ndarray | None]):
    rng = np.random.default_rng(0)

    def item(side=None):
        return Item(rng.integers(2, 40, size=4), np.zeros((0, 4), dtype=np.float32), None, 4.0, None, side)

    lists = [RankingList(item(), [item(s) for s in stored], [0] * len(stored), list(range(len(stored))), 0)]
    return collate(lists, max_tokens=8, max_regions=4, feature_dim=4)


def test_extra_side_inputs_by_hand_and_in_the_batch():
    # age_rank 6 -> log 7; age 0.5; verified unknown -> 0; has_images 1; rating deviation -1 -> -0.5.
    stored = np.array([6, 0.5, np.nan, 1, -1], dtype=np.float32)
    expected = [math.log(7), 0.5, 0.0, 1.0, -0.5]
    np.testing.assert_allclose(extra_side_inputs(stored), expected, rtol=1e-6)
    batch = side_batch([stored, None])
    assert batch.review_extra.shape == (2, len(STORED_SIDE_FEATURES))
    np.testing.assert_allclose(batch.review_extra.numpy(), [expected, [0.0] * 5], rtol=1e-6)


def test_extra_side_features_reach_the_score_only_when_named():
    stored = [np.array([0, 0, 1, 0, 0], dtype=np.float32), np.array([3, 1, 0, 1, 2], dtype=np.float32)]
    for names, moved, still in (("age", 1, 2), ("verified,rating_deviation", 4, 1), ("", None, 1)):
        net = side_model(extra_side_features=names)
        batch = side_batch(stored)
        with torch.no_grad():
            before = net(batch).row_scores
            batch.review_extra[:, still] += 5.0  # a feature the model was not given: no effect
            assert torch.allclose(before, net(batch).row_scores)
            if moved is not None:
                batch.review_extra[:, moved] += 5.0
                assert not torch.allclose(before, net(batch).row_scores)
    # Width: length/rating channel (3) plus the named columns; without any, no side scorer (the paper's model).
    assert side_model(side_features=True, extra_side_features="age,has_images").side_scorer[0].in_features == 5
    assert side_model().side_scorer is None
    # A model of the old shape (length and rating only) keeps its parameter names and sizes.
    old = side_model(side_features=True).state_dict()
    assert old["side_scorer.0.weight"].shape == (16, 3) and "side_columns" not in old


def test_extra_side_feature_names_are_checked(tmp_path: Path):
    assert parse_side_names(" age , verified") == (1, 2) and parse_side_names("") == ()
    for bad, message in (("age,votes", "unknown side feature 'votes'"), ("age,age", "a side feature is named twice")):
        with pytest.raises(MrhpError, match=f"model.extra_side_features: {message}"):
            Config(model=ModelConfig(extra_side_features=bad)).validate()
    # A config saved before the setting existed (no extra_side_features) reads as before; so does a checkpoint.
    saved = dataclasses.asdict(Config(model=ModelConfig(side_features=True)))
    del saved["model"]["extra_side_features"]
    assert config_from_dict(saved, source="old").model == ModelConfig(side_features=True)
    path = tiny_checkpoint_file(tmp_path / "old.safetensors", side_features=True)
    loaded = load_checkpoint(path)
    assert loaded.config.model.extra_side_features == "" and loaded.model.side_scorer[0].in_features == 3


def timed_dataset(path: Path, counts=(("train", 40), ("dev", 10), ("test", 10)), seed: int = 0) -> PreparedDataset:
    """Products of 4 reviews of equal length written on shuffled days; the oldest has most votes (label 3 - age
    rank), as exposure makes it."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, count in counts:
        products, reviews = [], []
        for p in range(count):
            pid = f"{name}{p}"
            products.append(RawProduct(pid, ""))
            for k, day in enumerate(rng.permutation(4)):
                reviews.append(RawReview(f"{pid}-{k}", pid, "same words here", int(3 - day), time=int(day) * DAY,
                                         verified=bool(k % 2)))
        splits[name] = RawSplit(name, products, reviews)
    prepare_dataset(RawDataset({"format": "test"}, splits), path, min_count=1)
    return PreparedDataset.open(path)


def test_age_floor_by_hand_and_unknown_times_last(tmp_path: Path):
    splits = {name: RawSplit(name, [RawProduct(name, "")], [
        RawReview(f"{name}new", name, "a b c", 0, time=300), RawReview(f"{name}old", name, "a", 3, time=100),
        RawReview(f"{name}unknown", name, "a b", 2), RawReview(f"{name}mid", name, "a b c d", 1, time=200)])
        for name in ("train", "test")}
    prepare_dataset(RawDataset({"format": "test"}, splits), tmp_path / "d", min_count=1)
    split = PreparedDataset.open(tmp_path / "d").split("test")
    assert age_scores(split).tolist() == [-2, 0, -4, -1]
    _, _, values = evaluate_floor(PreparedDataset.open(tmp_path / "d"), "age", "test", threshold=1,
                                        ties="pessimistic")
    # Oldest first: labels 3, 1, 0, 2 -> relevant (label > 1) at ranks 1 and 4: AP (1 + 2/4) / 2.
    assert values["map"].tolist() == pytest.approx([0.75])
    assert "age" in FLOOR_METHODS


def test_lambdamart_floor_reads_age_and_verified(tmp_path: Path):
    dataset = timed_dataset(tmp_path / "d")
    split = dataset.split("test")
    features, names = review_features(split, np.array([], dtype=np.int64), TextSummary("none", len(dataset.vocab)))
    column = dict(zip(names, features.T))
    ranks = split.review_side[:, 0]
    assert column["log_age_rank"].tolist() == pytest.approx(np.log1p(ranks).tolist())
    assert column["verified"].tolist() == [k % 2 for k in range(split.num_reviews)]
    assert column["has_images"].tolist() == [0] * split.num_reviews
    # Every review has the same text: only age tells the labels apart, and the floor learns it.
    model = train_lambdamart(dataset, threshold=1, ties="pessimistic", text_features="none", min_data_in_leaf=5,
                             max_rounds=60, early_stopping_rounds=10)
    assert model.dev_map == pytest.approx(100.0)
    length, _, _ = evaluate_floor(dataset, "length", "test", threshold=1, ties="pessimistic")
    age, _, _ = evaluate_floor(dataset, "age", "test", threshold=1, ties="pessimistic")
    assert age["map"] == pytest.approx(100.0) and length["map"] < 100.0


def test_ranking_requests_give_time_and_verified_to_the_side_features(tmp_path: Path):
    path = tiny_checkpoint_file(tmp_path / "m.safetensors", extra_side_features="age_rank,verified")
    ranker = Ranker(load_checkpoint(path), batch_rows=8)
    reviews = [{"review_id": "a", "text": "great pot", "time": 300, "verified": True, "rating": 5},
               {"review_id": "b", "text": "great pot", "time": 100},
               {"review_id": "c", "text": "great pot"}]
    parsed = ranker.parse({"text": "pot", "reviews": reviews})
    sides = np.array([item.side for item in parsed.ranking.reviews])
    # Computed over the request's reviews as prepare does over a product's: a has one older review.
    assert sides[:, 0].tolist()[:2] == [1, 0] and np.isnan(sides[2, 0])
    assert sides[:, 2].tolist()[0] == 1 and np.isnan(sides[1:, 2]).all()
    scores = ranker.rank("pot", reviews).scores
    # Same text: only the side features set the scores apart; b (rank 0, verified unknown) and c (both unknown)
    # give the model the same inputs, as unknown reads as 0.
    assert scores[0] != pytest.approx(scores[1]) and scores[1] == pytest.approx(scores[2])
    for bad, message in (({"time": "2020"}, "reviews\\[0\\]\\.time': expected seconds"),
                         ({"verified": 1}, "reviews\\[0\\]\\.verified': expected true or false")):
        with pytest.raises(MrhpError, match=message):
            ranker.parse({"text": "pot", "reviews": [{"review_id": "a", "text": "x", **bad}]})


def test_official_reviews_keep_their_time(tmp_path: Path):
    from test_data import read_fixture, write_official

    write_official(tmp_path, "columns", features=False)
    raw = read_fixture(tmp_path, product_features=None, review_features=None)
    # The fixture's train reviews have times 1..8 (R1..R8), listed here in the relations' order; dev has none.
    assert [r.time for r in raw.splits["train"].reviews] == [1, 2, 4, 3, 5, 6, 7, 8]
    assert [r.time for r in raw.splits["dev"].reviews] == [None, None]
    assert raw.notes["train"]["reviews_with_time"] == 8 and raw.notes["train"]["unreadable_review_times"] == 0
