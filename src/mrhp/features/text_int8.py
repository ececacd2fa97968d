"""The int8 variant of the pretrained text encoders (``model.text_encoder_precision = "int8"``, see
:mod:`mrhp.features.text_encoder`): every ``Linear`` of the transformer layers runs with int8 weights (one scale
per output channel) and int8 activations (one scale per input matrix, found at run time), through PyTorch's
dynamic quantization on the ``x86``/``fbgemm`` engine, after a SmoothQuant-style rescaling (Xiao et al., 2023)
that moves the few huge activation channels of BERT into the weights.

Why these choices (measured on this project's 2-core AMD EPYC, AVX2 without VNNI; docs/incoming/int8.md):

- without the rescaling the last-layer token states of MiniLM reach a mean cosine of only 0.92 to fp32 (0.96 with
  per-channel weights); with it, 0.99;
- ONNX Runtime was measured side by side (``benchmarks/text_encoder.py --onnxruntime``, MiniLM, 1 thread, 120
  Magazine reviews, busy machine): texts/s relative to torch fp32 in batches of 16 were torch int8 (this module)
  1.29x at cosine 0.990, ONNX Runtime fp32 1.30x, ONNX Runtime int8 (its own dynamic quantization, per-channel
  weights) 1.86x at cosine 0.989. ONNX Runtime is faster; it is not used yet because it needs an ONNX export of the
  layers at load time (or a cached file), two more packages (onnx, onnxruntime) and a second runtime beside torch,
  which did not fit this change: it is the next step if int8 speed matters (docs/incoming/int8.md).

The module knows the encoder only by the attributes it uses (``layers``, ``spec``, ``embeddings``, ``token_ids``,
``precision``), so that it sits below :mod:`mrhp.features.text_encoder`, which calls it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mrhp.errors import MrhpError

FP32 = "fp32"
INT8 = "int8"

# Calibration texts for the smoothing scales: what matters is which channels of the activations are huge, a property
# of the model that any text shows, so a few varied sentences (English, and some other languages for the multilingual
# encoder) suffice. Fixed, so every run of every command derives the same int8 weights.
_CALIBRATION = (
    "Great product, works exactly as described and arrived two days early.",
    "The magazine stopped coming after three issues and customer service never answered my emails.",
    "I bought this for my daughter; she reads every article and the recipes are easy to follow.",
    "Too many ads. The paper is thin, the photos are blurry, and the price went up again at renewal.",
    "Would not recommend. It broke after a week!",
    "5 stars",
    "Solid build quality, but the manual is confusing and the battery lasts only about 4 hours on a charge.",
    "Subscription renewed automatically at a higher price without any notice, which I consider dishonest.",
    "Barangnya bagus, pengiriman cepat. Terima kasih!",
    "Das Essen war ausgezeichnet, aber der Service war sehr langsam.",
    "El producto llegó roto y el vendedor no respondió.",
    "It is okay I guess. Nothing special, nothing terrible; it does what it says on the box and that is all.",
)
_CALIBRATION_SEQUENCES = 48  # and as many sequences of random word pieces, CALIBRATION_LENGTH pieces each
_CALIBRATION_LENGTH = 126
# alpha of SmoothQuant (s = max|x|^alpha / max|w|^(1 - alpha)). MiniLM's mean last-layer cosine to fp32 on 60
# Magazine reviews with these calibration ids: alpha 0.65 -> 0.986, 0.75 -> 0.990, 0.8 -> 0.986, 0.95 -> 0.976
# (and with 16 random sequences instead of 48, 0.7 -> 0.989, 0.85 -> 0.984; the sentences alone, 0.85 -> 0.960).
_SMOOTHING = 0.75


def quantized_engine(engines: Sequence[str] | None = None, capability: str | None = None) -> str:
    """The PyTorch quantized engine int8 runs on: ``x86`` (or ``fbgemm``), whose kernels (FBGEMM) need AVX2, as
    every x86-64 CPU since about 2013-2015 has (AVX-512 and VNNI are used when present). An ``MrhpError`` where this
    PyTorch build has neither engine or this CPU has no AVX2 (``engines`` and ``capability`` default to this
    machine's: ``torch.backends.quantized.supported_engines``, ``torch.backends.cpu.get_cpu_capability()``)."""
    engines = torch.backends.quantized.supported_engines if engines is None else engines
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    fallback = 'use model.text_encoder_precision = "fp32"'
    if not capability.startswith(("AVX2", "AVX512")):
        raise MrhpError(f"the int8 text encoder needs an x86-64 CPU with AVX2; this one offers {capability}: {fallback}")
    for engine in ("x86", "fbgemm"):
        if engine in engines:
            return engine
    raise MrhpError(f"the int8 text encoder needs PyTorch's x86 or fbgemm quantized engine; this PyTorch build "
                    f"offers {', '.join(engines) or 'none'}: {fallback}")


class Int8Linear(nn.Module):
    """A ``Linear`` run in int8: its input is divided by a per-channel smoothing scale s (the weight's columns were
    multiplied by s, so in exact arithmetic nothing changes), then PyTorch's dynamic quantized linear runs with
    int8 weights (one scale per output row) and int8 activations (one scale per input matrix)."""

    def __init__(self, linear: nn.Linear, activation_max: Tensor) -> None:
        super().__init__()
        from torch.ao.nn.quantized.dynamic import (
            Linear as DynamicLinear,  # imported under quantize_int8's filters
        )
        from torch.ao.quantization import per_channel_dynamic_qconfig

        weight_max = linear.weight.detach().abs().amax(dim=0).clamp(min=1e-5)  # [in]
        scale = (activation_max.clamp(min=1e-5) ** _SMOOTHING / weight_max ** (1 - _SMOOTHING)).clamp(min=1e-5)  # [in]
        smoothed = nn.Linear(linear.in_features, linear.out_features)
        with torch.no_grad():
            smoothed.weight.copy_(linear.weight * scale)  # [out, in]
            smoothed.bias.copy_(linear.bias)
        smoothed.qconfig = per_channel_dynamic_qconfig
        self.register_buffer("inverse_scale", 1.0 / scale)  # [in]
        self.linear = DynamicLinear.from_float(smoothed)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in] float32 -> [..., out] float32"""
        return self.linear(x * self.inverse_scale)


_LINEARS = ("qkv", "attention_out", "feedforward_in", "feedforward_out")


def _calibration_ids(encoder: nn.Module) -> list[list[int]]:
    """Token ids the smoothing scales are measured on: the calibration texts, and sequences of word pieces drawn at
    random (seed 0) from the vocabulary, which reach far more pieces and positions than a few sentences can."""
    ids = encoder.token_ids(_CALIBRATION, encoder.spec.max_positions)
    first, last = ids[0][0], ids[0][-1]  # the special tokens around every text
    vocab_size = encoder.embeddings.word.num_embeddings
    generator = torch.Generator().manual_seed(0)
    for _ in range(_CALIBRATION_SEQUENCES):
        pieces = torch.randint(1000, vocab_size, (_CALIBRATION_LENGTH,), generator=generator)  # [CALIBRATION_LENGTH]
        ids.append([first, *pieces.tolist(), last])
    return ids


def quantize_int8(encoder: nn.Module) -> nn.Module:
    """Turn ``encoder``'s transformer layers to int8 in place (:class:`Int8Linear` for each of their ``Linear``
    modules; the embeddings and LayerNorms stay float32) and return it. The smoothing scales come from the largest
    absolute input of each channel over the fixed calibration texts, run in fp32 first."""
    torch.backends.quantized.engine = quantized_engine()
    maxima: dict[tuple[int, str], Tensor] = {}

    def record(key: tuple[int, str]):
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            seen = inputs[0].detach().abs().flatten(0, -2).amax(dim=0)  # [in]
            maxima[key] = torch.maximum(maxima[key], seen) if key in maxima else seen
        return hook

    hooks = [getattr(layer, name).register_forward_hook(record((i, name)))
             for i, layer in enumerate(encoder.layers) for name in _LINEARS]
    try:
        with torch.inference_mode():
            for ids in _calibration_ids(encoder):
                tokens = torch.tensor([ids], dtype=torch.int64)  # [1, L]
                encoder(tokens, torch.ones_like(tokens, dtype=torch.bool))
    finally:
        for hook in hooks:
            hook.remove()
    # PyTorch marks torch.ao.quantization and quantized tensors as deprecated (in favour of torchao, which has no
    # fast int8 CPU kernel for this) yet ships them in 2.13: the warnings would only repeat that on every load.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch")
        warnings.filterwarnings("ignore", message=".*quantize_per_.*deprecated", category=UserWarning)
        for i, layer in enumerate(encoder.layers):
            for name in _LINEARS:
                setattr(layer, name, Int8Linear(getattr(layer, name), maxima[(i, name)]))
    encoder.precision = INT8
    return encoder
