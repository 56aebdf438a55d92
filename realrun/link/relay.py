"""A TCP relay that delays every byte by a fixed one-way latency in each direction.

This kernel has no netem, so the link's propagation delay is added in user space: each chunk
read from one side is stamped and written to the other side `delay_s` later, in order. Chunks
are read as soon as they arrive and up to `MAX_QUEUED_CHUNKS` wait at once, so the relay adds
latency without limiting bandwidth (the tbf qdiscs do that). Runs its own asyncio loop in a
daemon thread; `close()` stops it and drops every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

CHUNK_BYTES = 64 * 1024
MAX_QUEUED_CHUNKS = 1024
"""Per direction and connection: 64 MiB in flight, far above rate x delay at 1 Gbit/s."""


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy reader to writer, each chunk released `delay_s` after it was read; EOF likewise."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED_CHUNKS)

    async def read() -> None:
        while True:
            chunk = await reader.read(CHUNK_BYTES)
            await queue.put((loop.time() + delay_s, chunk))
            if not chunk:
                return

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    reading = asyncio.ensure_future(read())
    try:
        await write()
    finally:
        reading.cancel()


class DelayRelay:
    """Listens on `listen_host` (an ephemeral port unless given) and forwards to the target."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        delay_s: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.delay_s = delay_s
        self.listen_host = listen_host
        self.port = listen_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> DelayRelay:
        """Start listening (returns once the port is bound; `self.port` is then known)."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        try:
            future.result(timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_writer: asyncio.StreamWriter | None = None
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            pumps = [
                asyncio.ensure_future(_pump(client_reader, server_writer, self.delay_s)),
                asyncio.ensure_future(_pump(server_reader, client_writer, self.delay_s)),
            ]
            try:
                # a failing direction (a peer went away) drops the whole connection
                await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass  # the server cannot be reached: drop the client, as a real link would
        finally:
            self._tasks.discard(task)
            for writer in (client_writer, server_writer):
                if writer is not None:
                    writer.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop listening, drop every connection and end the thread (idempotent)."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DelayRelay"]
