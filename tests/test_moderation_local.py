"""The local models themselves, offline: real inference on the suite's text and image sets.

What the image tests can show: benign pictures stay well under the thresholds (no false
alarms on them) and the model scores are wired to the right categories. What they cannot
show: recall on real sexual or gore images — the suite has none (docs/moderation.md)."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.settings import get_settings
from tests.fixtures.moderation import synthetic_set
from tests.moderation_texts import BENIGN, OFFENSIVE
from workers.moderation import local_image, local_text
from workers.moderation.categories import Measured, Thresholds
from workers.moderation.engine import ModerationEngine
from workers.moderation.openai import Image
from workers.moderation.shape import response


@pytest.mark.parametrize("text", BENIGN)
def test_benign_text_not_vulgar(text: str) -> None:
    assert local_text.offensive(text) < Thresholds().vulgar


@pytest.mark.parametrize("text", OFFENSIVE)
def test_offensive_text_vulgar(text: str) -> None:
    assert local_text.offensive(text) >= Thresholds().vulgar


def test_one_insult_in_a_long_text_is_not_diluted() -> None:
    text = " ".join(BENIGN * 20) + " You are a stupid bitch."
    assert local_text.offensive(text) >= 0.9


def test_benign_images_score_low_and_skin_tones_score_higher() -> None:
    images = synthetic_set()
    benign = [local_image.score(d) for d in images["benign"]]
    assert max(s.sexual for s in benign) < 0.2 and max(s.graphic for s in benign) < 0.2
    skin = local_image.score(images["attempted"][0])
    # A direction, not a detection: crude skin-tone blobs score above every benign picture.
    assert skin.sexual > max(s.sexual for s in benign)


async def test_engine_runs_inference_off_the_event_loop() -> None:
    import threading

    seen: list[str] = []
    real = local_text.offensive

    def spy(text: str) -> float:
        seen.append(threading.current_thread().name)
        return real(text)

    engine = ModerationEngine(get_settings())
    await engine.start()
    try:
        local_text.offensive = spy
        out = await engine.moderate("hello there", Image(synthetic_set()["benign"][0], "image/png"))
    finally:
        local_text.offensive = real
        await engine.aclose()
    assert seen and all(name.startswith("moderation") for name in seen)
    assert out["overall_moderation"]["safe"] == 1


def _measured(**scores: float) -> Measured:
    m = Measured()
    for k, v in scores.items():
        m.add(k.replace("_", "/"), v, "test")
    return m


@pytest.mark.parametrize("scores,flag,safe", [
    ({"sexual": 0.9}, "nudity", 0),
    ({"sexual": 0.4}, None, 1),
    ({"violence/graphic": 0.7}, None, 0),
])
def test_image_thresholds(scores: dict[str, float], flag: str | None, safe: int) -> None:
    m = Measured()
    for k, v in scores.items():
        m.add(k, v, "test")
    sec = response(None, m, "local", Thresholds())["image_moderation"]
    assert sec["safe"] == safe
    if flag:
        assert sec[flag] == 1


def test_unscored_never_decides_safe() -> None:
    # Only vulgar was measured: a text is safe when it is not vulgar, whatever it may say.
    out: Any = response(_measured(vulgar=0.1), None, "local", Thresholds())
    assert out["text_moderation"]["safe"] == 1
    assert out["text_moderation"]["coverage"]["scored"] == ["vulgar"]
    assert "underage" in out["overall_moderation"]["coverage"]["unscored"]
    assert out["overall_moderation"]["coverage"]["scored"] == ["vulgar"]
