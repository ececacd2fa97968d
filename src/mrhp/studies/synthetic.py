"""A small multimodal review dataset in the official Amazon-MRHP format, from a documented generative process.

The process (all draws from one seeded numpy Generator):

1. `num_topics` topics. Topic t has `words_per_topic` pseudo-words of its own and an image prototype
   `mu_t ~ N(0, I_F)`, with F = `feature_dim`. `num_filler` filler pseudo-words are shared by every topic.
2. A product draws a topic t_p. Its name is 3 words of t_p; its description is 12 words, each a word of t_p with
   probability 0.7, else a filler word. It has 1 or 2 images of 4 to 6 regions, each region `mu_{t_p} + noise`.
3. Each review of a product draws a text match `q_text ~ U(0, 1)` and an image match `q_image ~ U(0, 1)`.
   Its text has 8 to 20 words: each word is a word of t_p with probability `0.8 q_text`, else a word of a random
   other topic (half of the rest) or a filler word. With probability `image_rate` the review has one image of
   4 to 6 regions, each region `mu_{t_p} + noise` with probability `q_image`, else `mu_u + noise` for a random
   other topic u; a review without image has `q_image = 0`.
4. Helpfulness `u = q_text + q_image + N(0, label_noise^2)`, cut at 0.5, 0.85, 1.2 and 1.55 into levels 0..4
   (`upvotes` in the relation files).

So a review is helpful when its text matches the product's text and its image regions match the product's image
regions: a text-only model can explain only the first half of the signal, and the noise bounds every model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrhp.data.records import SPLIT_NAMES

LEVEL_CUTS = (0.5, 0.85, 1.2, 1.55)


@dataclass(frozen=True)
class SyntheticSpec:
    products: tuple[int, int, int] = (160, 60, 100)  # train, dev, test
    reviews_per_product: tuple[int, int] = (6, 14)  # inclusive range
    num_topics: int = 16
    words_per_topic: int = 12
    num_filler: int = 40
    feature_dim: int = 32
    region_noise: float = 0.5
    image_rate: float = 0.8
    label_noise: float = 0.1
    seed: int = 0


def _pseudo_words(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    syllables = ["ka", "lo", "mi", "ru", "te", "za", "po", "ne", "shi", "va", "do", "ge", "bu", "fi", "ya", "xo"]
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(syllables, size=int(rng.integers(2, 4))))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _draw_words(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[list[list[str]], list[str]]:
    """Step 1's words, the generator's first draws: each topic's words, then the filler words."""
    taken: set[str] = set()
    topics = [_pseudo_words(rng, spec.words_per_topic, taken) for _ in range(spec.num_topics)]
    return topics, _pseudo_words(rng, spec.num_filler, taken)


def topic_words(spec: SyntheticSpec = SyntheticSpec()) -> list[list[str]]:
    """The words of each topic of the data `spec` generates (what a helpful review's text shares with its product)."""
    return _draw_words(np.random.default_rng(spec.seed), spec)[0]


def _regions(rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    return (centres + noise * rng.standard_normal(centres.shape)).astype(np.float32)


def write_official_dataset(out_dir: Path, category: str = "demo", spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write `{category}.{prd,rvw,rel}.{split}` JSON files and `features/{split}/{id}/{id}.pth` region features
    under `out_dir`; returns the features folder."""
    rng = np.random.default_rng(spec.seed)
    words_of_topic, filler = _draw_words(rng, spec)
    prototypes = rng.standard_normal((spec.num_topics, spec.feature_dim))
    features = out_dir / "features"
    out_dir.mkdir(parents=True, exist_ok=True)

    def save_images(split: str, item_id: str, images: list[np.ndarray]) -> None:
        folder = features / split / item_id
        folder.mkdir(parents=True, exist_ok=True)
        # The official files are torch.save'd lists of {"x": regions} dicts; write them the same way.
        torch.save([{"x": torch.from_numpy(regions)} for regions in images], folder / f"{item_id}.pth")

    for split, num_products in zip(SPLIT_NAMES, spec.products):
        products, reviews, relations = [], [], []
        for p in range(num_products):
            product_id = f"{split}-p{p}"
            topic = int(rng.integers(spec.num_topics))
            own = words_of_topic[topic]
            name = " ".join(rng.choice(own, size=3))
            description = " ".join(rng.choice(own) if rng.random() < 0.7 else rng.choice(filler) for _ in range(12))
            images = [
                _regions(rng, np.repeat(prototypes[topic][None], int(rng.integers(4, 7)), axis=0), spec.region_noise)
                for _ in range(int(rng.integers(1, 3)))
            ]
            save_images(split, product_id, images)
            products.append(
                {"product_id": product_id, "name": name, "description": description,
                 "img_url": [f"https://example.invalid/{product_id}/{i}.jpg" for i in range(len(images))]}
            )
            low, high = spec.reviews_per_product
            for r in range(int(rng.integers(low, high + 1))):
                review_id = f"{product_id}-r{r}"
                q_text, q_image = rng.random(), rng.random()
                words = []
                for _ in range(int(rng.integers(8, 21))):
                    if rng.random() < 0.8 * q_text:
                        words.append(rng.choice(own))
                    elif rng.random() < 0.5:
                        other = (topic + int(rng.integers(1, spec.num_topics))) % spec.num_topics
                        words.append(rng.choice(words_of_topic[other]))
                    else:
                        words.append(rng.choice(filler))
                img_url: list[str] = []
                if rng.random() < spec.image_rate:
                    count = int(rng.integers(4, 7))
                    others = (topic + rng.integers(1, spec.num_topics, size=count)) % spec.num_topics
                    centres = np.where((rng.random(count) < q_image)[:, None], prototypes[topic], prototypes[others])
                    save_images(split, review_id, [_regions(rng, centres, spec.region_noise)])
                    img_url = [f"https://example.invalid/{review_id}.jpg"]
                else:
                    q_image = 0.0
                helpfulness = q_text + q_image + spec.label_noise * rng.standard_normal()
                level = int(np.searchsorted(LEVEL_CUTS, helpfulness))
                reviews.append({"review_id": review_id, "content": " ".join(words), "img_url": img_url})
                relations.append({"product_id": product_id, "review_id": review_id, "upvotes": level})
        for kind, records in (("prd", products), ("rvw", reviews), ("rel", relations)):
            (out_dir / f"{category}.{kind}.{split}").write_text(json.dumps(records), encoding="utf-8")
    return features
