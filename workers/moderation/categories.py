"""The vocabulary of a moderation answer: score categories, flags, thresholds, measurements."""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.settings import Settings

# The reference's text_moderation.scores keys (OpenAI's omni-moderation categories), in its order.
CATEGORIES = (
    "harassment", "harassment/threatening", "sexual", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm/intent", "self-harm/instructions", "self-harm", "sexual/minors",
    "violence", "violence/graphic",
)
# The reference's image_moderation.scores keys; a backend that measures more adds its keys.
IMAGE_KEYS = ("harassment", "sexual", "violence", "self-harm")
# OpenAI categories that can be applied to images (its docs); the rest are text-only.
IMAGE_CAPABLE = frozenset({"sexual", "violence", "violence/graphic", "self-harm", "self-harm/intent",
                           "self-harm/instructions"})
# Not an OpenAI category: the local profanity model's "offensive language" probability.
VULGAR = "vulgar"
FLAGS = ("nudity", "underage", "vulgar")


@dataclass(frozen=True, slots=True)
class Thresholds:
    category: float = 0.5
    nudity: float = 0.5
    vulgar: float = 0.5
    underage: float = 0.2

    @classmethod
    def from_settings(cls, s: Settings) -> Thresholds:
        return cls(category=s.moderation_category_threshold, nudity=s.moderation_nudity_threshold,
                   vulgar=s.moderation_vulgar_threshold, underage=s.moderation_underage_threshold)


@dataclass(slots=True)
class Measured:
    """What was really measured for one input: score and source (model) per category.

    A category missing here was not measured, whatever the response shape shows for it.
    """

    scores: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # Categories scored over text and image together (one OpenAI result for both inputs).
    joint: set[str] = field(default_factory=set)

    def add(self, category: str, score: float, source: str) -> None:
        self.scores[category] = min(1.0, max(0.0, float(score)))
        self.sources[category] = source
