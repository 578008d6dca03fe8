"""A counting TCP proxy between an app and Redis, used only for the commands/round-trips rows.

INFO commandstats says how many commands ran, not how many times the app waited on the network:
a pipeline or a Lua script is several commands in one round trip. The proxy counts round trips
directly: a new one starts whenever the client sends after the server has answered (or on a
fresh connection), so a pipelined batch written at once counts once, and an unsolicited RESP3
invalidation push does not count at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from localservers import HOST
from localservers.ports import free_port


@dataclass
class Counters:
    round_trips: int = 0
    connections: int = 0


class RoundTripProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._counters = Counters()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=5)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def snapshot(self) -> Counters:
        with self._lock:
            return Counters(self._counters.round_trips, self._counters.connections)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, HOST, self.port)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self._counters.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            client_w.close()
            return
        # True while the client is still sending the same batch (no answer seen since).
        in_batch = [False]

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if not in_batch[0]:
                    in_batch[0] = True
                    with self._lock:
                        self._counters.round_trips += 1
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                in_batch[0] = False
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        with contextlib.suppress(ConnectionError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()
