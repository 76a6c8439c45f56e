"""The write-key cache: write key -> project id, reloaded from ClickHouse in the background so a
project created while ingest runs is accepted within seconds, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from werkstroom.logging import get_logger
from werkstroom.metrics import INGEST_KNOWN_KEYS

log = get_logger(__name__)


class WriteKeyCache:
    def __init__(self, load: Callable[[], dict[str, str]], refresh_seconds: float) -> None:
        self._load = load
        self._refresh = refresh_seconds
        self._keys: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_miss_reload = 0.0
        self._reloading: asyncio.Task[None] | None = None

    def get(self, write_key: str) -> str | None:
        project_id = self._keys.get(write_key)
        if project_id is None:
            self._reload_soon()
        return project_id

    async def reload(self) -> None:
        keys = await asyncio.to_thread(self._load)
        self._keys = keys
        INGEST_KNOWN_KEYS.set(len(keys))

    def _reload_soon(self) -> None:
        """An unknown key may be a project created a moment ago: reload, at most once a second."""
        now = time.monotonic()
        if now - self._last_miss_reload < 1.0 or (self._reloading and not self._reloading.done()):
            return
        self._last_miss_reload = now
        self._reloading = asyncio.get_running_loop().create_task(self._safe_reload())

    async def _safe_reload(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # keep serving the keys we have
            log.warning("write_keys_reload_failed", error=str(exc))

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            await self._safe_reload()

    async def stop(self) -> None:
        for task in (self._task, self._reloading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
