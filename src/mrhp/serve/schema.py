"""Request and response schema of the HTTP service: pydantic models that check the shape of a body (types, required
and unknown fields) and document it in the OpenAPI schema. What a request means, and every other check, is the
one request parser of `mrhp.inference`, which `mrhp predict` uses too."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ImageInput(BaseModel):
    """One image: inline region features or a base64 image file (exactly one of the two)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    regions: list[list[float]] | None = Field(
        None, description="region features [n_regions, F], F = the model's image feature size (see /v1/model)"
    )
    data: str | None = Field(None, description="a base64-encoded image file; needs an image feature extractor")


class ReviewInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    review_id: str | int = Field(description="unique within the request; integers are used as strings")
    text: str = Field(description="the review text (may be empty)")
    rating: float | None = Field(default=None, description="the star rating, for models with model.side_features")
    images: list[ImageInput] = Field(default_factory=list)


class RankRequest(BaseModel):
    """A product and the reviews to rank. The product text is `text`, or else `name` + " " + `description` (either
    may be absent, not both)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "product_id": "B001",
                    "text": "Steel stock pot, 6 quart, glass lid",
                    "images": [{"regions": [[0.1, 0.0, 0.3], [0.2, 0.5, 0.0]]}],
                    "reviews": [
                        {"review_id": "R1", "text": "Great pot for canning, heats evenly.", "images": []},
                        {"review_id": "R2", "text": "ok"},
                    ],
                }
            ]
        },
    )

    product_id: str | int | None = None
    text: str | None = None
    name: str | None = None
    description: str | None = None
    images: list[ImageInput] = Field(default_factory=list)
    reviews: list[ReviewInput]


class RankedReview(BaseModel):
    review_id: str
    score: float = Field(description="f(p, r): higher is more helpful; comparable within one model only")
    rank: int = Field(description="1 = most helpful; equal scores keep request order")


class RankResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "product_id": "B001",
                    "reviews": [
                        {"review_id": "R1", "score": 1.73, "rank": 1},
                        {"review_id": "R2", "score": -0.42, "rank": 2},
                    ],
                    "product_text_truncated": False,
                    "truncated_reviews": [],
                }
            ]
        }
    )

    product_id: str | None
    reviews: list[RankedReview] = Field(description="sorted by rank")
    product_text_truncated: bool = Field(description="the product text was cut at the model's max_tokens")
    truncated_reviews: list[str] = Field(description="ids of the reviews whose text was cut at max_tokens")


class ErrorResponse(BaseModel):
    message: str
    detail: Any = None
