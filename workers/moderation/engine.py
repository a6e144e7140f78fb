"""The moderation engine a worker process holds: models loaded once, inference on a thread
pool (never on the event loop), the OpenAI client when the operator set a key."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from jobs.metrics import WorkerMetrics
from jobs.settings import Settings
from workers.moderation import local_image, local_text, shape
from workers.moderation import openai as openai_api
from workers.moderation.categories import VULGAR, Measured, Thresholds
from workers.moderation.openai import Image
from workers.providers.errors import ProviderRejected
from workers.providers.http import call, make_client
from workers.providers.retry import RetryPolicy

log = logging.getLogger("syncnode.moderation")
T = TypeVar("T")


class ModerationEngine:
    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.thresholds = Thresholds.from_settings(settings)
        key = settings.moderation_openai_key
        self.key = key.get_secret_value() if key is not None and key.get_secret_value() else None
        self.backend = "openai" if self.key else "local"
        self.executor = ThreadPoolExecutor(max_workers=max(1, settings.moderation_threads),
                                           thread_name_prefix="moderation")
        self.client: httpx.AsyncClient | None = None
        self.loaded = False
        if self.key:
            self.client = make_client(settings.openai_base_url,
                                      connect_timeout=settings.provider_connect_timeout,
                                      read_timeout=settings.provider_read_timeout,
                                      max_connections=settings.moderation_concurrency)

    def _load(self) -> None:
        local_text.load()  # vulgar is always local: OpenAI has no profanity category
        if self.backend == "local":
            local_image.load()

    async def start(self) -> float:
        """Load the models (once per process; a second engine finds them loaded)."""
        t0 = time.perf_counter()
        await self._run(self._load)
        self.loaded = True
        return time.perf_counter() - t0

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def moderate(self, text: str | None, image: Image | None) -> dict[str, Any]:
        """The response without ``uid``: sections for the inputs given, and the overall one."""
        # Text and image models run side by side on the pool.
        vulgar = asyncio.ensure_future(self._run(local_text.offensive, text)) if text is not None else None
        try:
            if self.backend == "openai":
                text_m, image_m = await self._openai(text, image)
            else:
                text_m, image_m = Measured() if text is not None else None, await self._local_image(image)
            if vulgar is not None and text_m is not None:
                text_m.add(VULGAR, await vulgar, local_text.version())
        finally:
            if vulgar is not None and not vulgar.done():
                vulgar.cancel()
        return shape.response(text_m, image_m, self.backend, self.thresholds)

    async def _local_image(self, image: Image | None) -> Measured | None:
        if image is None:
            return None
        try:
            s = await self._run(local_image.score, image.data)
        except Exception as e:  # the ingress decoded it already; a model-side decoder may still differ
            log.warning("local image model could not read the image: %s", e)
            raise ProviderRejected("SyncNode", f"the image could not be read by the moderation model ({e})")
        m = Measured()
        m.add("sexual", s.sexual, local_image.version())
        m.add("violence/graphic", s.graphic, local_image.version())
        return m

    async def _openai(self, text: str | None, image: Image | None) -> tuple[Measured | None, Measured | None]:
        assert self.client is not None and self.key is not None
        client, key, model = self.client, self.key, self.settings.moderation_openai_model
        result = await call(openai_api.PROVIDER, lambda: openai_api.moderate(client, key, model, text, image),
                            RetryPolicy.provider(self.settings), metrics=self.metrics)
        return openai_api.split(result, text is not None, image is not None)
