#!/usr/bin/env python3
"""A loopback TCP proxy that adds a fixed delay to every byte in each direction.

usage: delay_proxy.py LISTEN_PORT UPSTREAM_PORT ONE_WAY_MS

With ONE_WAY_MS = 10 every request and its response pay 20 ms more round trip, as an object
store 20 ms away would on a kept-alive connection, while bandwidth stays what loopback gives.
A new connection's handshake is not charged: moto's server (werkzeug) closes every connection
after one response, so clients cannot reuse connections there as they do with a real store, and
charging the handshake would make each request pay two round trips. Each direction of each
connection has a reader that stamps every chunk it reads (up to 1 MiB) with the time it is due
and queues it, and a writer that sends each chunk when it is due. Reading never waits for the
delay, so data in flight is pipelined like on a long link instead of paying the delay once per
chunk, and connections are independent tasks, so concurrent requests are not serialised.
Prints `ready` on stdout once it listens; runs until killed. Standard library only.
"""
import asyncio
import sys

CHUNK = 1 << 20
QUEUED = 1024  # chunks in flight per direction before the reader waits (bounds memory)


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk `delay` seconds after it arrived; passes EOF on."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(QUEUED)

    async def receive():
        while True:
            try:
                data = await reader.read(CHUNK)
            except ConnectionError:
                data = b""
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(receive(), send())


async def main():
    listen, upstream, one_way_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = one_way_ms / 1000

    async def connection(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                pump(client_reader, server_writer, delay), pump(server_reader, client_writer, delay)
            )
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", listen, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
