#!/usr/bin/env python3
"""A TCP proxy in front of PostgreSQL whose connections can go silent, the way a link does
when a host vanishes or a NAT forgets the flow: nothing is closed, nothing gets through.

    silent_proxy.py LISTEN_PORT UPSTREAM_PORT TRIGGER_FILE [MARKER [at-once]]

Prints "listening" once it accepts connections. When TRIGGER_FILE appears, every connection
still open whose client has sent MARKER (default LISTEN: the worker's notification connection)
stops forwarding in both directions (connections made later are not touched); it prints
"silenced N" and removes the file. (A file, not a signal: under a full test run's load a
SIGUSR1 once ended the proxy instead.) With at-once, a connection goes silent as its client
sends MARKER, which is not forwarded: that statement never gets an answer ("silent at once N").
"""
import asyncio, os, sys

listen_port, upstream_port, trigger = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
marker = (sys.argv[4] if len(sys.argv) > 4 else "LISTEN").encode()
at_once = len(sys.argv) > 5 and sys.argv[5] == "at-once"
connections = []  # [{"marked": bool, "silent": bool, "closed": bool}]
silenced_at_once = []


async def pipe(reader, writer, state, watch_marker):
    try:
        while data := await reader.read(65536):
            if watch_marker and marker in data:
                state["marked"] = True
                if at_once and not state["silent"]:
                    state["silent"] = True
                    silenced_at_once.append(state)
                    print(f"silent at once {len(silenced_at_once)}", flush=True)
            if state["silent"]:
                continue
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        state["closed"] = True
        if not state["silent"]:
            writer.close()


async def handle(client_reader, client_writer):
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    state = {"marked": False, "silent": False, "closed": False}
    connections.append(state)
    await asyncio.gather(pipe(client_reader, upstream_writer, state, True),
                         pipe(upstream_reader, client_writer, state, False))


def silence():
    count = 0
    for state in connections:
        if state["marked"] and not state["silent"] and not state["closed"]:
            state["silent"] = True
            count += 1
    print(f"silenced {count}", flush=True)


async def watch_trigger():
    while True:
        if os.path.exists(trigger):
            silence()
            os.remove(trigger)
        await asyncio.sleep(0.05)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("listening", flush=True)
    async with server:
        await asyncio.gather(server.serve_forever(), watch_trigger())


asyncio.run(main())
