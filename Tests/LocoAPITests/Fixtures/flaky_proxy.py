#!/usr/bin/env python3
"""A TCP proxy in front of the Loco API that misbehaves on deployment event streams, the way
real networks and proxies do, for the CLI's resume and fallback tests.

    flaky_proxy.py LISTEN_PORT UPSTREAM_PORT MODE STATE_FILE
    MODE drop:     cut each of the first 3 event streams after 700 response bytes
    MODE buffer:   answer event streams with Content-Type text/plain (as a buffering proxy would)
STATE_FILE gets one line per misdeed, so the test can check it happened.
"""
import asyncio, sys

listen_port, upstream_port, mode, state_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
drops_left = 3


def note(text):
    with open(state_file, "a") as f:
        f.write(text + "\n")


async def handle(client_reader, client_writer):
    global drops_left
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    watch = {"events": False, "sent": 0, "cut": False}

    async def client_to_upstream():
        try:
            while data := await client_reader.read(65536):
                if b"/events" in data and b"GET /v1/deployments/" in data:
                    watch["events"], watch["sent"] = True, 0
                    watch["cut"] = mode == "drop" and drops_left > 0
                upstream_writer.write(data)
                await upstream_writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            upstream_writer.close()

    async def upstream_to_client():
        global drops_left
        try:
            while data := await upstream_reader.read(65536):
                if watch["events"] and mode == "buffer" and b"text/event-stream" in data:
                    data = data.replace(b"text/event-stream", b"text/plain")
                    note("buffered")
                if watch["events"] and watch["cut"]:
                    room = 700 - watch["sent"]
                    if len(data) >= room:
                        client_writer.write(data[:room])
                        await client_writer.drain()
                        drops_left -= 1
                        note("dropped")
                        break
                    watch["sent"] += len(data)
                client_writer.write(data)
                await client_writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            client_writer.close()
            upstream_writer.close()

    await asyncio.gather(client_to_upstream(), upstream_to_client())


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    note("listening")
    async with server:
        await server.serve_forever()

asyncio.run(main())
