"""Request and response schema of the HTTP service, as pydantic models. The request models only document the
body in the OpenAPI schema: a request is validated once, by the one request parser (`mrhp.ranking.request`), which
`mrhp predict` uses too. The response models build the answer."""

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
    time: int | None = Field(default=None, description="when it was written, seconds since 1970 (UTC), for models "
                                                       "with model.extra_side_features")
    verified: bool | None = Field(default=None, description="a verified purchase, for models with "
                                                            "model.extra_side_features")
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
    explain: bool = Field(default=False, description="add each review's explanation (the paper's model only)")


class WordWeight(BaseModel):
    word: str = Field(description="a token the model read (a word piece for a pretrained text encoder)")
    position: int = Field(description="its position among the review's tokens, from 0")
    weight: float = Field(description="its share of the score")


class RegionWeight(BaseModel):
    image: int = Field(description="the review image, as its index in the request's images")
    region: int = Field(description="the region within that image, from 0")
    weight: float = Field(description="its share of the score")


class Explanation(BaseModel):
    """bias + side + the paths (or the parts, or the sources) = the score, up to float rounding."""

    bias: float = Field(description="the scorer's bias (eq. 29)")
    side: float | None = Field(default=None, description="the side features' term (model.side_features)")
    paths: dict[str, float] = Field(description="the three fusion paths of eq. 28 (mrhp.models.paper.PATHS)")
    parts: dict[str, float] = Field(description="their five d-sized parts (mrhp.models.paper.PARTS)")
    sources: dict[str, float] = Field(description="the same total by input: product/review text/image")
    words: list[WordWeight] = Field(description="the review's tokens of largest share in absolute value")
    regions: list[RegionWeight] = Field(description="the review's image regions of largest share in absolute value")


class RankedReview(BaseModel):
    review_id: str
    score: float = Field(description="f(p, r): higher is more helpful; comparable within one model only")
    rank: int = Field(description="1 = most helpful; equal scores keep request order")
    explanation: Explanation | None = Field(default=None, description="when the request asks for it")


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
