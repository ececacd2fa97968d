"""HTTP scoring service (`mrhp serve`): a FastAPI application that ranks the reviews of one product per request.

Modules: `schema` (request and response models), `settings` (`ServeSettings`, every setting of the service),
`page` (the web page at `/`, files in `static/`) and `app` (`create_app`, `run_server`). Requests are parsed and
scored by `mrhp.ranking.ranker.Ranker`, as in `mrhp predict`.

Endpoints (OpenAPI schema with examples at `/docs` and `/openapi.json`):

* `POST /v1/rank`: a product (text, optional images) and its reviews (id, text, optional images) -> the reviews
  with score and rank (1 = most helpful), sorted by rank; the same scores as `mrhp predict`. With
  `"explain": true`, each review also carries its explanation (`mrhp.models.explain`; 422 at `explain` for a model
  that cannot explain its scores).
* `GET /`: a page to rank reviews typed into a form and read their explanations (`mrhp.ranking.serve.page`).
* `GET /healthz`: liveness, with the scorer's queue length and counters.
* `GET /v1/model`: model name and class, checkpoint identity (SHA-256, format version, writing mrhp version),
  resolved config, training metrics, input sizes and the limits below.

Images in a request are objects with either `regions`, region features given inline as a JSON list of lists
`[n_regions, F]` (F = the model's image feature size; accepted always), or `data`, a base64 image file (JPEG,
PNG, ...) turned into region features by `mrhp.features.images.ImageFeatureExtractor` (EfficientNet-Lite0, 1280-d). Image
files are accepted when the `images` extra is installed and the model takes 1280-d features, i.e. was trained on
features of that extractor, with the same `image_input_size` and `image_max_regions` (the defaults of
`mrhp features`); otherwise they are answered 501 naming the field and the reason. A model without an image side
ignores every image, as `mrhp predict` does. A request names no file, and nothing a client sends is ever unpickled
or loaded with numpy's file loaders: the body is JSON, images are decoded by Pillow with a pixel-count guard.

Limits (each answered with a clear status and message; the settings and their defaults are `ServeSettings`):

* request body at most `max_request_bytes` -> 413;
* at most `max_reviews` reviews per request -> 422 at `reviews`;
* texts at most `max_text_chars` characters -> 422 at the field; shorter texts are tokenized
  and cut at the model's `data.max_tokens` tokens exactly as in training, and the answer lists which texts were
  cut (`product_text_truncated`, `truncated_reviews`);
* regions: each item keeps its first `data.max_regions` regions, as in training (`truncated_*` does not cover
  regions);
* malformed JSON, a wrong type, a missing or unknown field -> 422 whose `message` names the field;
* at most `max_queued` requests waiting for the model -> 503 with `Retry-After`;
* NaN or infinite scores (a model that overflows) -> 500 whose `message` names the checkpoint, never a 200.

Concurrency and batching: one scorer thread owns the model and runs every forward pass under `torch.no_grad`;
requests wait in a bounded queue. The scorer takes the oldest request, gathers the requests that arrive within
`batch_wait_ms` (and those already queued) up to `batch_rows` review rows, and scores them in one forward pass.
A lone request is scored in a forward pass of its own; batches of other composition change scores only by
float32 rounding (see `mrhp.ranking.ranker`).
"""
