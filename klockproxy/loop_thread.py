"""Run an asyncio service (a proxy, a sandbox, a webhook) on its own loop in a daemon thread;
cancel a service's background task.

Synchronous callers (tests that drive kubectl with subprocess, benchmarks, the demo) start a
service this way and stop it again. A service is anything with ``async start()`` (ready when
it returns) and ``async stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar


class Service(Protocol):
    """What a :class:`LoopThread` runs: ``url`` is where it listens (known once started)."""

    url: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Service)


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has ended (None: nothing to do)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class LoopThread(Generic[S]):
    """``service`` on its own event loop in a daemon thread.

    ``start()`` returns once ``service.start()`` has returned, and raises what it raised (or
    TimeoutError); ``stop()`` runs ``service.stop()`` on the loop and joins the thread.
    """

    thread_name = "klockproxy-loop"

    def __init__(self, service: S) -> None:
        self.service = service
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``https://HOST:PORT`` the service listens on (known once started)."""
        return self.service.url

    def cpu_seconds(self) -> float:
        """CPU time the service's thread has used so far (benchmarks: what the service
        itself costs, whatever else the machine runs)."""
        thread = self._thread
        if thread is None or thread.ident is None:
            return 0.0
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))

    def start(self, timeout: float = 30.0) -> Self:
        """Start the service and wait until it is ready."""
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.thread_name} did not become ready in {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the service and join the thread."""
        loop, ev = self._loop, self._stop_event
        if loop is not None and ev is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(ev.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the service's loop (to read its state safely from another thread)."""
        if self._loop is None:
            raise RuntimeError(f"{self.thread_name} is not running")

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self.service.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self.service.stop()
