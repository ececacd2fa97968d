"""The web page of `mrhp serve`, driven in a real headless Chromium (Debian's `chromium` and `chromium-driver`)
through selenium, against the service on 127.0.0.1. Skipped when either is absent; any browser console error
fails the test. `MRHP_PAGE_SCREENSHOT=docs/serve-page.png` saves a screenshot of the ranked answer there."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
from support import serving, tiny_checkpoint_file

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from mrhp.ranking.serve.app import create_app  # noqa: E402
from mrhp.ranking.serve.settings import ServeSettings  # noqa: E402

PRODUCT = "Steel stock pot with a heavy glass lid"
REVIEWS = [
    "Great pot, the lid is heavy and the steel handle stays cool. I love it.",
    "Bad handle, it broke after a week.",
    "ok",
]
MAX_TEXT_CHARS = 300


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    checkpoint = tiny_checkpoint_file(tmp_path_factory.mktemp("page") / "mrhp.safetensors")
    with serving(create_app(checkpoint, ServeSettings(max_text_chars=MAX_TEXT_CHARS))) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=900,1300", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingOptions", {"browser": "ALL"})
    # The driver is named explicitly, so selenium-manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    """The browser's console errors since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait(driver, condition, seconds: float = 20):
    return WebDriverWait(driver, seconds).until(lambda _: condition())


def fill(driver, product: str, reviews: list[str]) -> None:
    field = driver.find_element(By.ID, "product-text")
    field.clear()
    field.send_keys(product)
    while len(driver.find_elements(By.CSS_SELECTOR, "#reviews > li")) < len(reviews):
        driver.find_element(By.ID, "add-review").click()
    while len(removes := driver.find_elements(By.CSS_SELECTOR, "#reviews .remove-review")) > len(reviews):
        removes[-1].click()
    for area, text in zip(driver.find_elements(By.CSS_SELECTOR, "#reviews .review-text"), reviews):
        area.clear()
        driver.execute_script("arguments[0].value = arguments[1];", area, text)


def error_next_to(driver, field_id: str) -> str:
    """The error shown for a field: the text of the element its aria-describedby names, once visible."""
    field = driver.find_element(By.ID, field_id)
    error = driver.find_element(By.ID, field.get_attribute("aria-describedby"))
    wait(driver, error.is_displayed)
    assert field.get_attribute("aria-invalid") == "true"
    return error.text


def test_the_page_ranks_and_explains_reviews(url: str, browser):
    browser.get(url + "/")
    wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert "Model mrhp" in browser.find_element(By.ID, "model-info").text

    # Every control has a label (its own <label> or text around it).
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input, textarea, select'))"
        ".filter(c => !c.labels || !c.labels.length || !c.labels[0].textContent.trim()).map(c => c.outerHTML);")
    assert unlabelled == []
    labels = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "#reviews .review-label")]
    assert labels == ["Review 1", "Review 2", "Review 3"]

    fill(browser, PRODUCT, REVIEWS)
    browser.find_element(By.ID, "rank").click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#results > li")) == len(REVIEWS))
    results = browser.find_elements(By.CSS_SELECTOR, "#results > li")
    shown = [(r.find_element(By.TAG_NAME, "h3").text, r.find_element(By.CLASS_NAME, "score").text) for r in results]

    # The page shows what the service answers for the same request, in rank order, with explanations.
    body = {"text": PRODUCT, "images": [], "explain": True,
            "reviews": [{"review_id": str(k + 1), "text": text, "images": []} for k, text in enumerate(REVIEWS)]}
    answer = httpx.post(f"{url}/v1/rank", json=body).json()
    assert shown == [(f"Rank {r['rank']}: review {r['review_id']}", f"score {r['score']:.4f}")
                     for r in answer["reviews"]]
    first = results[0]
    words = [w.find_element(By.CLASS_NAME, "word-text").text for w in first.find_elements(By.CSS_SELECTOR, ".word")]
    assert words == [w["word"] for w in answer["reviews"][0]["explanation"]["words"]]
    bars = [b.text for b in first.find_elements(By.CLASS_NAME, "bar-name")]
    assert bars == ["intra-modal fusion", "inter-modal fusion", "intra-review fusion", "bias"]
    assert console_errors(browser) == []

    if os.environ.get("MRHP_PAGE_SCREENSHOT"):
        save_screenshot(browser, Path(os.environ["MRHP_PAGE_SCREENSHOT"]))


def test_errors_are_shown_next_to_their_field(url: str, browser):
    browser.get(url + "/")
    wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")

    # Checked by the page before sending: no product text, an empty second review.
    fill(browser, "", ["fine pot", "", "ok"])
    browser.find_element(By.ID, "rank").click()
    assert error_next_to(browser, "product-text") == "Enter the product's text."
    second = browser.find_elements(By.CSS_SELECTOR, "#reviews .review-text")[1].get_attribute("id")
    assert error_next_to(browser, second) == "Write this review's text, or remove the review."
    assert browser.switch_to.active_element.get_attribute("id") == "product-text"  # focus on the first error
    assert browser.find_elements(By.CSS_SELECTOR, "#results > li") == []

    # Refused by the service (422 naming reviews[2].text): shown next to the third review, nowhere else.
    fill(browser, PRODUCT, ["fine pot", "ok", "x" * (MAX_TEXT_CHARS + 1)])
    browser.find_element(By.ID, "rank").click()
    third = browser.find_elements(By.CSS_SELECTOR, "#reviews .review-text")[2].get_attribute("id")
    assert f"exceeds the limit of {MAX_TEXT_CHARS}" in error_next_to(browser, third)
    assert not browser.find_element(By.ID, "product-text-error").is_displayed()
    assert not browser.find_element(By.ID, "form-error").is_displayed()
    # Chromium reports the refused request itself on the console (which shows that the console is read);
    # nothing else may be there.
    errors = console_errors(browser)
    refused = [e for e in errors
               if "/v1/rank - Failed to load resource: the server responded with a status of 422" in e]
    assert len(refused) == 1 and errors == refused


def save_screenshot(driver, path: Path) -> None:
    """The page as shown, as a small palette PNG."""
    from PIL import Image

    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(900, min(int(height) + 40, 2400))
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=64).save(path, optimize=True)


def test_image_files_are_uploaded_and_refused_ones_shown_at_their_field(browser, tmp_path: Path):
    images = pytest.importorskip("mrhp.features.images")
    if not images.images_available():
        pytest.skip("the images extra is not installed")
    import numpy as np
    from PIL import Image

    photo, junk = tmp_path / "photo.png", tmp_path / "junk.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(photo)
    junk.write_bytes(b"not an image at all")
    checkpoint = tiny_checkpoint_file(tmp_path / "wide.safetensors", image_dim=images.FEATURE_DIM)
    with serving(create_app(checkpoint, ServeSettings(threads=1))) as url:
        browser.get(url + "/")
        wait(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        assert not browser.find_element(By.ID, "images-note").is_displayed()
        fill(browser, PRODUCT, REVIEWS[:2])
        browser.find_elements(By.CSS_SELECTOR, "#reviews .review-images")[0].send_keys(str(photo))
        browser.find_element(By.ID, "rank").click()
        wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#results > li")) == 2, seconds=60)
        with_photo = [r for r in browser.find_elements(By.CSS_SELECTOR, "#results > li")
                      if r.find_element(By.TAG_NAME, "h3").text.endswith("review 1")][0]
        regions = [li.text for li in with_photo.find_elements(By.CSS_SELECTOR, ".regions li")]
        assert len(regions) == 5 and all(text.startswith("image 1, region ") for text in regions)
        assert console_errors(browser) == []

        files = browser.find_elements(By.CSS_SELECTOR, "#reviews .review-images")[1]
        files.send_keys(str(junk))
        browser.find_element(By.ID, "rank").click()
        assert "unusable image" in error_next_to(browser, files.get_attribute("id"))
        errors = console_errors(browser)
    assert len(errors) == 1 and "status of 422" in errors[0]
