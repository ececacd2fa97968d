// The page of `mrhp serve`: a form for one product and its reviews, sent to POST v1/rank, and the ranked answer
// with each score's explanation. Plain JavaScript, no dependencies. User text is only ever set as textContent.
"use strict";

const PATH_NAMES = { intra_modal: "intra-modal", inter_modal: "inter-modal", intra_review: "intra-review" };
const SOURCE_NAMES = {
  product_text: "product text", review_text: "review text",
  product_image: "product images", review_image: "review images",
};

let model = null; // GET v1/model

const $ = (id) => document.getElementById(id);

function reviewItems() {
  return Array.from($("reviews").children);
}

// ---- reviews ---------------------------------------------------------------------------------------------------

let reviewSerial = 0; // element ids stay unique when reviews are removed; labels are renumbered

function addReview(text = "") {
  const item = $("review-template").content.firstElementChild.cloneNode(true);
  const key = `review-${++reviewSerial}`;
  const textarea = item.querySelector(".review-text");
  const textError = item.querySelector(".review-text-error");
  const files = item.querySelector(".review-images");
  const filesError = item.querySelector(".review-images-error");
  textarea.id = `${key}-text`;
  textError.id = `${key}-text-error`;
  textarea.setAttribute("aria-describedby", textError.id);
  files.id = `${key}-images`;
  filesError.id = `${key}-images-error`;
  files.setAttribute("aria-describedby", filesError.id);
  item.querySelector(".review-label").htmlFor = textarea.id;
  item.querySelector(".review-images-label").htmlFor = files.id;
  item.querySelector(".images-field").hidden = !(model && model.inputs.image_files);
  textarea.value = text;
  item.querySelector(".remove-review").addEventListener("click", () => {
    item.remove();
    renumberReviews();
  });
  $("reviews").append(item);
  renumberReviews();
  return item;
}

function renumberReviews() {
  reviewItems().forEach((item, k) => {
    item.querySelector(".review-label").textContent = `Review ${k + 1}`;
    item.querySelector(".review-images-label").textContent = `Review ${k + 1} images`;
    item.querySelector(".remove-review").textContent = `Remove review ${k + 1}`;
  });
}

// ---- errors ----------------------------------------------------------------------------------------------------

function clearErrors() {
  for (const error of document.querySelectorAll(".error")) {
    error.hidden = true;
    error.textContent = "";
  }
  for (const field of document.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
}

// The field of a service error (`text`, `reviews[2].images[0]`, ...) -> [its control or null, its error element].
function errorPlace(field) {
  const review = /^reviews\[(\d+)\](?:\.(\w+))?/.exec(field || "");
  if (review) {
    const item = reviewItems()[Number(review[1])];
    if (item) {
      return review[2] === "images"
        ? [item.querySelector(".review-images"), item.querySelector(".review-images-error")]
        : [item.querySelector(".review-text"), item.querySelector(".review-text-error")];
    }
  }
  if (field === "reviews") return [null, $("reviews-error")];
  if (/^(text|name|description)$/.test(field || "")) return [$("product-text"), $("product-text-error")];
  if (/^images\b/.test(field || "")) return [$("product-images"), $("product-images-error")];
  return [null, $("form-error")];
}

function showError(field, message) {
  const [control, error] = errorPlace(field);
  error.textContent = error.textContent ? `${error.textContent} ${message}` : message;
  error.hidden = false;
  if (control) control.setAttribute("aria-invalid", "true");
  return control;
}

// Every error of a failed answer ({"message", "detail"}), each next to its field; the first field gets focus.
function showAnswerErrors(status, answer) {
  const controls = [];
  if (status === 422 && Array.isArray(answer.detail)) {
    for (const item of answer.detail) controls.push(showError(item.field, item.msg));
  } else {
    const named = /^((?:reviews\[\d+\]|images\[\d+\]|text)[\w.\[\]]*): (.*)$/s.exec(answer.message || "");
    if (named) controls.push(showError(named[1], named[2]));
    else controls.push(showError(null, answer.message || `the service answered ${status}`));
  }
  const first = controls.find((control) => control);
  if (first) first.focus();
}

// ---- the request -----------------------------------------------------------------------------------------------

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function imagesOf(input) {
  if (!input || input.closest(".images-field").hidden) return [];
  return Promise.all(Array.from(input.files).map(async (file) => ({ data: await base64Of(file) })));
}

// The form's checks before anything is sent; false (with the errors shown) when something is missing.
function checkForm() {
  const controls = [];
  if (!$("product-text").value.trim()) controls.push(showError("text", "Enter the product's text."));
  const items = reviewItems();
  if (!items.length) showError("reviews", "Add at least one review.");
  items.forEach((item, k) => {
    if (!item.querySelector(".review-text").value.trim()) {
      controls.push(showError(`reviews[${k}].text`, "Write this review's text, or remove the review."));
    }
  });
  if (controls.length) controls[0].focus();
  return items.length > 0 && controls.length === 0;
}

async function buildRequest() {
  const reviews = [];
  for (const [k, item] of reviewItems().entries()) {
    reviews.push({
      review_id: String(k + 1),
      text: item.querySelector(".review-text").value,
      images: await imagesOf(item.querySelector(".review-images")),
    });
  }
  return {
    text: $("product-text").value,
    images: await imagesOf($("product-images")),
    reviews,
    explain: $("explain").checked && !$("explain").disabled,
  };
}

async function rank(event) {
  event.preventDefault();
  clearErrors();
  if (!checkForm()) return;
  const button = $("rank");
  button.disabled = true;
  button.textContent = "Ranking…";
  try {
    const body = await buildRequest();
    const response = await fetch("v1/rank", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({ message: `the service answered ${response.status}` }));
    if (response.ok) showResults(body, answer);
    else showAnswerErrors(response.status, answer);
  } catch (error) {
    showError(null, `Could not rank: ${error.message}`);
  } finally {
    button.disabled = false;
    button.textContent = "Rank the reviews";
  }
}

// ---- the answer ------------------------------------------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const signed = (value) => (value >= 0 ? "+" : "−") + Math.abs(value).toFixed(4);

function barRow(list, name, value, largest) {
  const row = element("li", "bar-row");
  row.append(element("span", "bar-name", name));
  const bar = element("span", `bar ${value >= 0 ? "positive" : "negative"}`);
  bar.style.width = `${largest > 0 ? Math.round((60 * Math.abs(value)) / largest) : 0}%`;
  row.append(bar, element("span", "bar-value", signed(value)));
  list.append(row);
}

function explanationOf(explanation) {
  const box = element("div", "explanation");
  const terms = Object.entries(explanation.paths).map(([name, value]) => [`${PATH_NAMES[name] || name} fusion`, value]);
  terms.push(["bias", explanation.bias]);
  if (explanation.side !== undefined && explanation.side !== null) terms.push(["length and rating", explanation.side]);
  const largest = Math.max(...terms.map(([, value]) => Math.abs(value)));
  box.append(element("h4", "", "Score = sum of"));
  const paths = element("ul", "bars");
  paths.setAttribute("aria-label", "contributions of the fusion paths");
  for (const [name, value] of terms) barRow(paths, name, value, largest);
  box.append(paths);

  const sources = Object.entries(explanation.sources)
    .map(([name, value]) => `${SOURCE_NAMES[name] || name} ${signed(value)}`).join(", ");
  box.append(element("p", "sources", `By input: ${sources}.`));
  if (explanation.words.length) {
    box.append(element("h4", "", "Most influential words"));
    const words = element("ul", "words");
    for (const word of explanation.words) {
      const chip = element("li", `word ${word.weight >= 0 ? "positive" : "negative"}`);
      chip.append(element("span", "word-text", word.word), element("span", "word-weight", signed(word.weight)));
      words.append(chip);
    }
    box.append(words);
  }
  if (explanation.regions.length) {
    box.append(element("h4", "", "Most influential image regions"));
    const regions = element("ul", "regions");
    for (const region of explanation.regions) {
      const where = `image ${region.image + 1}, region ${region.region + 1}`;
      regions.append(element("li", "", `${where}: ${signed(region.weight)}`));
    }
    box.append(regions);
  }
  return box;
}

function showResults(request, answer) {
  const texts = new Map(request.reviews.map((review) => [review.review_id, review.text]));
  const results = $("results");
  results.replaceChildren();
  for (const review of answer.reviews) {
    const item = element("li", "result");
    const heading = element("h3", "", `Rank ${review.rank}: review ${review.review_id}`);
    item.append(heading, element("p", "score", `score ${review.score.toFixed(4)}`));
    item.append(element("blockquote", "", texts.get(review.review_id)));
    if (answer.truncated_reviews.includes(review.review_id)) {
      item.append(element("p", "note", `Only the first ${model.inputs.max_tokens} tokens were read.`));
    }
    if (review.explanation) item.append(explanationOf(review.explanation));
    results.append(item);
  }
  $("results-section").hidden = false;
}

// ---- start -----------------------------------------------------------------------------------------------------

async function start() {
  $("add-review").addEventListener("click", () => addReview().querySelector(".review-text").focus());
  $("rank-form").addEventListener("submit", rank);
  try {
    const response = await fetch("v1/model");
    model = await response.json();
  } catch (error) {
    $("model-info").textContent = `Could not reach the service: ${error.message}`;
    return;
  }
  const checkpoint = model.checkpoint.file;
  $("model-info").textContent = `Model ${model.model.name} (${model.model.parameters.toLocaleString("en")} ` +
    `parameters) from ${checkpoint}.`;
  for (const field of document.querySelectorAll(".images-field")) field.hidden = !model.inputs.image_files;
  if (!model.inputs.image_files) {
    $("images-note").textContent = `Image files: ${model.inputs.image_files_note}. ` +
      "Region features can be sent to POST /v1/rank (see /docs).";
    $("images-note").hidden = false;
  }
  if (!model.inputs.explains) {
    $("explain").checked = false;
    $("explain").disabled = true;
    $("explain").parentElement.append(` (model ${model.model.name} does not explain its scores)`);
  }
  for (let k = 0; k < 3; k++) addReview();
  document.body.dataset.ready = "true";
}

start();
