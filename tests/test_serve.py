"""The HTTP scoring service over real HTTP on 127.0.0.1 (uvicorn in a thread, httpx), and resumable streaming
batch prediction. The model is a tiny untrained one saved with `save_checkpoint`: its scores are arbitrary but
deterministic, which is all that agreement between the service and `predict` needs."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from support import serving

from mrhp.cli import main
from mrhp.config import Config, DataConfig, ModelConfig, ModelInputs
from mrhp.data.text import Vocabulary
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mrhp.models.registry import build_model
from mrhp.ranking import predict as predict_module
from mrhp.ranking.predict import predict_file
from mrhp.ranking.ranker import Ranker, file_sha256
from mrhp.ranking.serve.app import create_app
from mrhp.ranking.serve.scorer import BatchScorer, ServiceBusy
from mrhp.ranking.serve.settings import ServeSettings

WORDS = ["<pad>", "<unk>", "great", "pot", "lid", "steel", "bad", "handle", "cheap", "heavy", "ok", "love", "it"]
F = 4  # image feature size of the tiny model
MAX_TOKENS = 6


def tiny_checkpoint(path: Path, image_dim: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = Config(
        data=DataConfig(max_tokens=MAX_TOKENS, max_regions=5, eval_batch_rows=8),
        model=ModelConfig(hidden_size=8, embedding_dim=6, num_heads=2, interaction_layers=1, feedforward_size=8),
    ).validate()
    inputs = ModelInputs(vocab_size=len(WORDS), image_dim=image_dim, embedding_dim=6)
    model = build_model(config.model, inputs)
    save_checkpoint(path, Checkpoint(model=model, config=config, inputs=inputs, vocab=Vocabulary(WORDS),
                                     relevance_threshold=1,
                                     metrics={"dev_map": 0.5}, state={"epoch": 1}))
    return path


def regions(n: int, seed: int, width: int = F) -> list[list[float]]:
    return np.random.default_rng(seed).uniform(-1, 1, (n, width)).round(3).tolist()


def request(product_id: str, seed: int, reviews: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "product_id": product_id,
        "text": " ".join(rng.choice(WORDS[2:], 4)),
        "images": [{"regions": regions(2, seed)}],
        "reviews": [
            {"review_id": f"{product_id}-r{k}", "text": " ".join(rng.choice(WORDS[2:], 1 + k % 4)),
             "images": [{"regions": regions(1 + k % 3, seed * 10 + k)}] if k % 2 == 0 else []}
            for k in range(reviews)
        ],
    }


def as_jsonl_request(body: dict, folder: Path) -> dict:
    """The same request in the `mrhp predict` format: inline regions become .npy feature files."""

    def files(item: dict, name: str) -> list[str]:
        out = []
        for k, image in enumerate(item.get("images", [])):
            np.save(folder / f"{name}-{k}.npy", np.asarray(image["regions"], dtype=np.float32))
            out.append(f"{name}-{k}.npy")
        return out

    return {
        "product_id": body["product_id"], "text": body["text"], "images": files(body, body["product_id"]),
        "reviews": [{"review_id": r["review_id"], "text": r["text"], "images": files(r, r["review_id"])}
                    for r in body["reviews"]],
    }


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.safetensors", image_dim=F)


@pytest.fixture(scope="module")
def base_url(checkpoint_path: Path) -> Iterator[str]:
    settings = ServeSettings(max_request_bytes=20_000, max_reviews=5, max_text_chars=200, batch_wait_ms=20)
    app = create_app(checkpoint_path, settings)
    with serving(app) as url:
        yield url


def test_ranking_matches_in_process_prediction(base_url: str, checkpoint_path: Path, tmp_path: Path):
    body = request("p1", seed=1, reviews=4)
    response = httpx.post(f"{base_url}/v1/rank", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["product_id"] == "p1" and [r["rank"] for r in answer["reviews"]] == [1, 2, 3, 4]
    scores = [r["score"] for r in answer["reviews"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4

    # `mrhp predict` on the same product (feature files instead of inline regions): identical lines.
    (tmp_path / "in.jsonl").write_text(json.dumps(as_jsonl_request(body, tmp_path)) + "\n")
    assert predict_file(checkpoint_path, tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False) == 1
    expected = json.loads((tmp_path / "out.jsonl").read_text())
    assert answer["reviews"] == expected["reviews"]

    # A product with no review, integer ids, name + description, a text-free review.
    empty = httpx.post(f"{base_url}/v1/rank", json={"product_id": 7, "name": "pot", "reviews": []}).json()
    assert empty["product_id"] == "7" and empty["reviews"] == []
    odd = {"name": "steel", "description": "pot", "reviews": [{"review_id": 3, "text": ""}]}
    assert httpx.post(f"{base_url}/v1/rank", json=odd).json()["reviews"][0]["review_id"] == "3"


def test_texts_longer_than_max_tokens_are_cut_and_reported(base_url: str):
    body = {"text": "great pot " * 4, "reviews": [{"review_id": "long", "text": "great " * 7},
                                                   {"review_id": "short", "text": "great"}]}
    answer = httpx.post(f"{base_url}/v1/rank", json=body).json()
    assert answer["product_text_truncated"] is True and answer["truncated_reviews"] == ["long"]
    # Cut at MAX_TOKENS: the words after it change nothing.
    longer = {**body, "reviews": [{"review_id": "long", "text": "great " * 6 + "bad lid"}, body["reviews"][1]]}
    again = httpx.post(f"{base_url}/v1/rank", json=longer).json()
    assert again["reviews"] == answer["reviews"]


def test_concurrent_requests_agree_with_in_process_scores(base_url: str, checkpoint_path: Path):
    ranker = Ranker(load_checkpoint(checkpoint_path), batch_rows=8)
    bodies = [request(f"c{i}", seed=20 + i, reviews=1 + i % 4) for i in range(12)]
    answers: list[dict | None] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def client(i: int) -> None:
        start.wait()
        answers[i] = httpx.post(f"{base_url}/v1/rank", json=bodies[i], timeout=30).json()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for body, answer in zip(bodies, answers):
        parsed = ranker.parse(body)
        expected = dict(zip(parsed.review_ids, ranker.score([parsed.ranking])[0]))
        assert {r["review_id"]: r["score"] for r in answer["reviews"]} == pytest.approx(expected, abs=1e-5)
    health = httpx.get(f"{base_url}/healthz").json()
    assert health["status"] == "ok" and health["requests"] >= len(bodies)


def test_scorer_groups_queued_requests_into_one_forward_and_refuses_when_full(checkpoint_path: Path):
    ranker = Ranker(load_checkpoint(checkpoint_path), batch_rows=6)
    lists = [ranker.parse({"text": "pot", "reviews": [{"review_id": str(k), "text": "great"} for k in range(n)]}).ranking
             for n in (1, 2, 3, 4)]
    scorer = BatchScorer(ranker, wait_s=0.0, max_queued=4)
    futures = [scorer.submit(ranking) for ranking in lists]  # queued before the thread runs
    with pytest.raises(ServiceBusy):
        scorer.submit(lists[0])
    scorer.start()
    results = [future.result(timeout=20) for future in futures]
    scorer.stop()
    assert [len(scores) for scores, _ in results] == [1, 2, 3, 4]
    assert all(split is None for _, split in results)  # no request asked for explanations
    assert (scorer.forwards, scorer.requests) == (2, 4)  # 1 + 2 + 3 rows, then 4 (it would overflow 6)


def test_health_model_and_openapi(base_url: str, checkpoint_path: Path):
    assert httpx.get(f"{base_url}/healthz").json()["status"] == "ok"
    info = httpx.get(f"{base_url}/v1/model").json()
    assert info["model"]["name"] == "mrhp" and info["model"]["class"] == "HelpfulnessModel"
    assert info["checkpoint"]["sha256"] == file_sha256(checkpoint_path)
    assert info["checkpoint"]["format_version"] == 1 and info["mrhp_version"] == info["checkpoint"]["written_by_mrhp"]
    assert info["config"]["model"]["hidden_size"] == 8 and info["metrics"] == {"dev_map": 0.5}
    assert info["inputs"]["image_feature_size"] == F and info["inputs"]["max_tokens"] == MAX_TOKENS
    assert info["inputs"]["image_files"] is False and "4-d region features" in info["inputs"]["image_files_note"]
    assert info["limits"]["max_reviews"] == 5 and info["limits"]["max_request_bytes"] == 20_000
    schema = httpx.get(f"{base_url}/openapi.json").json()
    assert schema["components"]["schemas"]["RankRequest"]["examples"][0]["reviews"]
    assert {"200", "413", "415", "422", "501", "503"} <= set(schema["paths"]["/v1/rank"]["post"]["responses"])
    assert "at most 5 reviews" in schema["info"]["description"]


BAD_REQUESTS = {
    "malformed JSON": ('{"text": "x", "reviews": [', 422, "malformed JSON at character"),
    "wrong type": ({"text": "x", "reviews": [{"review_id": "a", "text": 5}]}, 422, "reviews[0].text"),
    "missing field": ({"text": "x"}, 422, "reviews: missing required field"),
    "unknown field": ({"text": "x", "reviews": [], "reveiws": []}, 422, "reveiws"),
    "not an object": ([1, 2], 422, "body"),
    "two texts": ({"text": "x", "name": "y", "reviews": []}, 422, "either 'text' or 'name'"),
    "no text": ({"reviews": []}, 422, "missing product text"),
    "too many reviews": ({"text": "x", "reviews": [{"review_id": str(k), "text": ""} for k in range(6)]}, 422,
                         "reviews: 6 reviews exceed the limit of 5"),
    "text too long": ({"text": "x", "reviews": [{"review_id": "a", "text": "y" * 201}]}, 422,
                      "reviews[0].text: text of 201 characters exceeds the limit of 200"),
    "duplicate id": ({"text": "x", "reviews": [{"review_id": "a", "text": ""}, {"review_id": "a", "text": ""}]},
                     422, "reviews[1].review_id: duplicate review id 'a'"),
    "feature size": ({"text": "x", "images": [{"regions": [[0.0] * 3]}], "reviews": []}, 422,
                     "images[0].regions: region feature size 3, the model takes 4"),
    "ragged regions": ({"text": "x", "reviews": [{"review_id": "a", "text": "", "images": [
        {"regions": [[0.0] * 4, [0.0] * 3]}]}]}, 422, "reviews[0].images[0].regions: rows of unequal length"),
    "non-finite": ('{"text": "x", "images": [{"regions": [[NaN, 0, 0, 0]]}], "reviews": []}', 422,
                   "images[0].regions: region features hold NaN"),
    "image source": ({"text": "x", "images": [{}], "reviews": []}, 422, "exactly one of 'regions' or 'data'"),
    "bad base64": ({"text": "x", "images": [{"data": "not base64!"}], "reviews": []}, 422,
                   "images[0].data: not valid base64"),
    "image file, 4-d model": ({"text": "x", "images": [{"data": base64.b64encode(b"\x89PNG").decode()}],
                              "reviews": []}, 501, "images[0].data: this model takes 4-d region features"),
    "not JSON": (('{"text": "x", "reviews": []}', "text/plain"), 415, "Content-Type: application/json"),
    "too large": ({"text": "x" * 30_000, "reviews": []}, 413, "exceeds the limit of 20000 bytes"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests_are_answered_with_status_and_field(base_url: str, case: str):
    body, status, message = BAD_REQUESTS[case]
    if isinstance(body, tuple):  # (raw body, content type)
        response = httpx.post(f"{base_url}/v1/rank", content=body[0], headers={"content-type": body[1]})
    elif isinstance(body, str):
        response = httpx.post(f"{base_url}/v1/rank", content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(f"{base_url}/v1/rank", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]


def test_a_streamed_body_over_the_limit_is_refused(base_url: str):
    def chunks() -> Iterator[bytes]:  # no content-length: the limit is counted as the body arrives
        yield b'{"text": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'", "reviews": []}'

    response = httpx.post(f"{base_url}/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "20000 bytes" in response.json()["message"]
    assert httpx.get(f"{base_url}/nowhere").status_code == 404


def test_bad_checkpoint_or_address_fails_at_start_up(tmp_path: Path, checkpoint_path: Path, capsys):
    with pytest.raises(MrhpError, match="checkpoint not found"):
        create_app(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    assert main(["serve", "--checkpoint", str(tmp_path / "junk.safetensors"), "--port", "0"]) == 2
    assert "mrhp serve: error: " in capsys.readouterr().err
    # A checkpoint of a future format version: a clear error, not a traceback.
    with safe_open(str(checkpoint_path), framework="pt") as handle:
        header = json.loads(handle.metadata()["mrhp"])
    save_file(load_file(str(checkpoint_path)), str(tmp_path / "future.safetensors"),
              metadata={"mrhp": json.dumps({**header, "version": 99})})
    assert main(["serve", "--checkpoint", str(tmp_path / "future.safetensors"), "--port", "0"]) == 2
    assert "format version 99 is not supported" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--checkpoint", str(checkpoint_path), "--port", port]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_image_files_go_through_the_image_feature_extractor(tmp_path: Path):
    images = pytest.importorskip("mrhp.features.images")
    if not images.images_available():
        pytest.skip("the images extra is not installed")
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    path = tiny_checkpoint(tmp_path / "wide.safetensors", image_dim=images.FEATURE_DIM)
    features = images.ImageFeatureExtractor(threads=1).extract_bytes(png).regions
    inline = {"text": "pot", "images": [{"regions": features.tolist()}], "reviews": [
        {"review_id": "a", "text": "great", "images": [{"regions": features.tolist()}]},
        {"review_id": "b", "text": "bad"}]}
    as_files = {**inline, "images": [{"data": base64.b64encode(png).decode()}], "reviews": [
        {**inline["reviews"][0], "images": [{"data": base64.b64encode(png).decode()}]}, inline["reviews"][1]]}
    with serving(create_app(path, ServeSettings(threads=1))) as url:
        assert httpx.get(f"{url}/v1/model").json()["inputs"]["image_files"] is True
        from_files = httpx.post(f"{url}/v1/rank", json=as_files, timeout=30)
        from_regions = httpx.post(f"{url}/v1/rank", json=inline, timeout=30)
        broken = httpx.post(f"{url}/v1/rank", json={**inline, "images": [{"data": base64.b64encode(b"junk").decode()}]})
    assert from_files.status_code == 200, from_files.text
    got, expected = from_files.json()["reviews"], from_regions.json()["reviews"]
    assert [(r["review_id"], r["rank"]) for r in got] == [(r["review_id"], r["rank"]) for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    assert broken.status_code == 422 and "images[0].data: unusable image" in broken.json()["message"]


def test_predict_takes_image_files_like_the_service(tmp_path: Path):
    images = pytest.importorskip("mrhp.features.images")
    if not images.images_available():
        pytest.skip("the images extra is not installed")
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    path = tiny_checkpoint(tmp_path / "wide.safetensors", image_dim=images.FEATURE_DIM)
    np.save(tmp_path / "p.npy", images.ImageFeatureExtractor(threads=1).extract_files([tmp_path / "p.png"])[0].regions)
    line = {"product_id": "x", "text": "pot", "images": ["p.png"],
            "reviews": [{"review_id": "a", "text": "great", "images": ["p.png"]}, {"review_id": "b", "text": "bad"}]}
    as_npy = {**line, "images": ["p.npy"], "reviews": [{**line["reviews"][0], "images": ["p.npy"]}, line["reviews"][1]]}
    for name, body in (("files", line), ("npy", as_npy)):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(body) + "\n")
        assert main(["predict", "--checkpoint", str(path), "--input", str(tmp_path / f"{name}.jsonl"),
                     "--output", str(tmp_path / f"{name}-out.jsonl"), "--no-progress"]) == 0
    got, expected = (json.loads((tmp_path / f"{name}-out.jsonl").read_text())["reviews"] for name in ("files", "npy"))
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    (tmp_path / "bad.jsonl").write_text(json.dumps({**line, "images": ["junk.jpg"]}) + "\n")
    assert main(["predict", "--checkpoint", str(path), "--input", str(tmp_path / "bad.jsonl"),
                 "--output", str(tmp_path / "bad-out.jsonl"), "--no-progress"]) == 2


# ---- batch prediction: streaming and resuming ------------------------------------------------------------------


@pytest.fixture()
def batch_input(tmp_path: Path) -> Path:
    lines = [json.dumps(as_jsonl_request(request(f"b{i}", seed=40 + i, reviews=1 + i % 3), tmp_path))
             for i in range(9)]
    lines.insert(4, "")  # blank lines are skipped, but still counted in the resume point
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, owner: object, function: str, calls: int) -> None:
    """Make `owner.<function>` raise on its `calls + 1`-th call, like a kill at that point."""
    original, count = getattr(owner, function), [0]

    def wrapper(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, function, wrapper)


def test_predict_resumes_after_an_interruption(checkpoint_path: Path, batch_input: Path, tmp_path: Path, monkeypatch):
    reference = tmp_path / "reference.jsonl"
    assert predict_file(checkpoint_path, batch_input, reference, progress=False, batch_rows=4) == 9
    expected = reference.read_bytes()

    output = tmp_path / "ranked.jsonl"
    with monkeypatch.context() as patch:
        interrupt_after(patch, Ranker, "score", 2)
        with pytest.raises(Interrupted):
            predict_file(checkpoint_path, batch_input, output, progress=False, batch_rows=4)
    partial, progress = tmp_path / ".ranked.jsonl.partial", tmp_path / ".ranked.jsonl.progress.json"
    assert not output.exists() and partial.is_file() and progress.is_file()
    done = json.loads(progress.read_text())
    assert done["products"] == len(partial.read_text().splitlines()) > 0
    with partial.open("ab") as handle:  # a line torn by the kill
        handle.write(b'{"product_id": "b9", "revi')

    scored: list[int] = []
    original = Ranker.score
    monkeypatch.setattr(Ranker, "score", lambda ranker, lists: scored.append(len(lists)) or original(ranker, lists))
    assert predict_file(checkpoint_path, batch_input, output, progress=False, batch_rows=4) == 9
    assert output.read_bytes() == expected and not partial.exists() and not progress.exists()
    assert sum(scored) == 9 - done["products"]  # only the rest was scored again


def test_predict_rescores_lines_written_after_the_last_record(checkpoint_path: Path, batch_input: Path,
                                                              tmp_path: Path, monkeypatch):
    expected_path = tmp_path / "reference.jsonl"
    predict_file(checkpoint_path, batch_input, expected_path, progress=False, batch_rows=4)
    output = tmp_path / "ranked.jsonl"
    with monkeypatch.context() as patch:  # killed after writing a batch, before recording it
        interrupt_after(patch, predict_module, "_write_progress", 3)
        with pytest.raises(Interrupted):
            predict_file(checkpoint_path, batch_input, output, progress=False, batch_rows=4)
    assert main(["predict", "--checkpoint", str(checkpoint_path), "--input", str(batch_input), "--output",
                 str(output), "--batch-rows", "4", "--no-progress"]) == 0
    assert output.read_bytes() == expected_path.read_bytes()


def test_predict_refuses_to_resume_with_another_checkpoint_or_input(checkpoint_path: Path, batch_input: Path,
                                                                     tmp_path: Path, monkeypatch, capsys):
    output = tmp_path / "ranked.jsonl"
    with monkeypatch.context() as patch:
        interrupt_after(patch, Ranker, "score", 1)
        with pytest.raises(Interrupted):
            predict_file(checkpoint_path, batch_input, output, progress=False, batch_rows=4)
    other = tiny_checkpoint(tmp_path / "other.safetensors", image_dim=F, seed=1)
    args = ["predict", "--input", str(batch_input), "--output", str(output), "--batch-rows", "4", "--no-progress"]
    assert main([*args, "--checkpoint", str(other)]) == 2
    assert "used another checkpoint" in capsys.readouterr().err
    lines = batch_input.read_text().splitlines()
    batch_input.write_text("\n".join([json.dumps({**json.loads(lines[0]), "product_id": "x0"}), *lines[1:]]) + "\n")
    assert main([*args, "--checkpoint", str(checkpoint_path)]) == 2
    assert "changed since the interrupted run" in capsys.readouterr().err
    assert main([*args, "--checkpoint", str(checkpoint_path), "--restart"]) == 0
    assert json.loads(output.read_text().splitlines()[0])["product_id"] == "x0"


@pytest.mark.parametrize("case", ["same", "relative", "symlink", "checkpoint", "partial"])
def test_predict_refuses_an_output_that_is_an_input(checkpoint_path: Path, batch_input: Path, tmp_path: Path,
                                                    case: str, monkeypatch, capsys):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(batch_input)
    monkeypatch.chdir(tmp_path / "sub")
    if case == "partial":  # the input is the partial file of the output
        batch_input = batch_input.rename(tmp_path / ".out.jsonl.partial")
    output = {"same": batch_input, "relative": Path("..") / "sub" / ".." / batch_input.name,
              "symlink": tmp_path / "link.jsonl", "checkpoint": checkpoint_path, "partial": tmp_path / "out.jsonl"}
    before = batch_input.read_bytes(), checkpoint_path.read_bytes()
    assert main(["predict", "--checkpoint", str(checkpoint_path), "--input", str(batch_input), "--output",
                 str(output[case]), "--no-progress"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert (batch_input.read_bytes(), checkpoint_path.read_bytes()) == before


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path, batch_input: Path, capsys):
    path = tiny_checkpoint(tmp_path / "nan.safetensors", image_dim=F)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    name = next(name for name in tensors if name.startswith("model.") and tensors[name].is_floating_point())
    tensors[name][..., 0] = float("nan")
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(MrhpError, match=f"nan.safetensors: weight tensor {name} holds NaN"):
        load_checkpoint(path)
    assert main(["predict", "--checkpoint", str(path), "--input", str(batch_input), "--output",
                 str(tmp_path / "out.jsonl"), "--no-progress"]) == 2
    assert f"weight tensor {name}" in capsys.readouterr().err and not (tmp_path / "out.jsonl").exists()


def overflowing_loader(monkeypatch, owner: object) -> None:
    """Make `owner.load_checkpoint` give a model whose finite weights overflow to infinite scores."""
    def load(path: Path) -> Checkpoint:
        checkpoint = load_checkpoint(path)
        with torch.no_grad():
            for parameter in checkpoint.model.parameters():
                parameter.fill_(1e30)
        return checkpoint

    monkeypatch.setattr(owner, "load_checkpoint", load)


def test_non_finite_scores_are_an_error_not_json_nan(checkpoint_path: Path, batch_input: Path, tmp_path: Path,
                                                     monkeypatch, capsys):
    from mrhp.ranking import ranker as inference
    from mrhp.ranking.serve import app as app_module

    overflowing_loader(monkeypatch, inference)
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(checkpoint_path), "--input", str(batch_input), "--output",
                 str(output), "--no-progress"]) == 2
    assert f"{checkpoint_path}: the model computed NaN or infinite scores" in capsys.readouterr().err
    assert not output.exists()

    overflowing_loader(monkeypatch, app_module)
    with serving(create_app(checkpoint_path, ServeSettings(batch_wait_ms=1))) as url:
        response = httpx.post(f"{url}/v1/rank", json=request("p1", seed=1))
    assert response.status_code == 500
    assert "the model computed NaN or infinite scores" in response.json()["message"]


@pytest.mark.parametrize("case", ["output-is-a-folder", "parent-is-a-file", "deep-json"])
def test_predict_failures_are_errors_not_tracebacks(checkpoint_path: Path, batch_input: Path, tmp_path: Path,
                                                    case: str, capsys):
    output = tmp_path / "out" / "ranked.jsonl"
    if case == "output-is-a-folder":
        output.mkdir(parents=True)
    elif case == "parent-is-a-file":
        output.parent.write_text("")
    else:
        batch_input.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["predict", "--checkpoint", str(checkpoint_path), "--input", str(batch_input), "--output",
                 str(output), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrhp predict: error: ") and "Traceback" not in err
    assert ("line 1: JSON nested too deeply" in err) if case == "deep-json" else (str(output.parent) in err)
