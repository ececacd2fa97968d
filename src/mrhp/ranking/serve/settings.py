"""The settings of the HTTP service, in one place: `create_app` and `run_server` take them, `run_server` hands
them to worker processes, and `mrhp serve` makes one command-line option of each field (its `help` metadata is the
option's help)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from mrhp.compute.devices import DEVICE_FORMS, is_device_name
from mrhp.errors import MrhpError
from mrhp.features.images import DEFAULT_INPUT_SIZE, DEFAULT_MAX_REGIONS

MAX_BATCH_WAIT_MS = 1000.0
MAX_BODY_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class ServeSettings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (the default: this machine only)"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    workers: int = field(default=1, metadata={"help": "processes, each with its own copy of the model"})
    threads: int | None = field(default=None, metadata={
        "help": "torch threads per worker (default: CPUs / workers)"})
    max_request_bytes: int = field(default=32 * 2**20, metadata={"help": "larger request bodies get 413"})
    max_reviews: int = field(default=256, metadata={"help": "more reviews per request get 422"})
    max_text_chars: int = field(default=20_000, metadata={
        "help": "longer texts get 422; shorter ones are cut at the model's max_tokens, as in training"})
    max_queued: int = field(default=64, metadata={"help": "more requests waiting for the model get 503"})
    batch_rows: int | None = field(default=None, metadata={
        "help": "review rows per forward pass (default: the checkpoint's eval_batch_rows)"})
    batch_wait_ms: float = field(default=2.0, metadata={
        "help": f"how long a batch waits for more requests (at most {MAX_BATCH_WAIT_MS:g})"})
    max_image_files: int = field(default=32, metadata={
        "help": "more base64 image files per request get 422 (each runs the image feature extractor)"})
    body_timeout_s: float = field(default=30.0, metadata={
        "help": "a request body not received whole within this many seconds gets 408 (slow clients)"})
    image_input_size: int = field(default=DEFAULT_INPUT_SIZE, metadata={
        "help": "image files: input size of the feature extractor, as the training images were extracted"})
    image_max_regions: int = field(default=DEFAULT_MAX_REGIONS, metadata={
        "help": "image files: regions per image, as the training images were extracted"})
    product_cache: int = field(default=256, metadata={
        "help": "product texts whose token states are kept for their next request (0: none)"})
    device: str = field(default="auto", metadata={"help": "where the model scores: auto, cpu, cuda or cuda:N"})

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            # Every count and size is positive; port 0 means any free port.
            if isinstance(value, int) and setting.name not in ("port", "product_cache") and value < 1:
                raise MrhpError(f"{setting.name} must be >= 1, got {value}")
        if not is_device_name(self.device):
            raise MrhpError(f"device must be one of {', '.join(DEVICE_FORMS)}, got {self.device!r}")
        if self.product_cache < 0:
            raise MrhpError(f"product_cache must be >= 0, got {self.product_cache}")
        if not 0 <= self.port <= 65535:
            raise MrhpError(f"port must be within [0, 65535], got {self.port}")
        # inf would overflow the scorer's timer; a long wait holds every request that long.
        if not 0 <= self.batch_wait_ms <= MAX_BATCH_WAIT_MS:
            raise MrhpError(f"--batch-wait-ms must be a number within [0, {MAX_BATCH_WAIT_MS:g}], got "
                            f"{self.batch_wait_ms}")
        if not 0 < self.body_timeout_s <= MAX_BODY_TIMEOUT_S:
            raise MrhpError(f"--body-timeout-s must be a number within (0, {MAX_BODY_TIMEOUT_S:g}], got "
                            f"{self.body_timeout_s}")
