#!/usr/bin/env python3
"""A PgQueuer worker for `scripts/bench crash`: runs jobs of entrypoint `crash` that sleep
`--sleep-ms`, at most `--concurrency` at a time, until it is stopped (SIGTERM) or fails.

    bench-pgqueuer-worker.py DSN [--sleep-ms 20] [--concurrency 10] [--supervised]

Without --supervised it runs a QueueManager directly, as an application embedding PgQueuer
does (and as `pgq run` does by default); with it, under PgQueuer's own supervisor with
`restart_on_failure` (its default restart delay, 5 s), PgQueuer's best answer to a failure.
Prints `exited: <error>` if the worker stops by itself.
"""
import argparse
import asyncio
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import pgqueuer
import uvloop
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn")
    parser.add_argument("--sleep-ms", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--supervised", action="store_true")
    options = parser.parse_args()
    # PgQueuer needs max_concurrent_tasks >= 2 * batch_size.
    batch_size = max(1, options.concurrency // 2)

    @asynccontextmanager
    async def make_manager():
        connection = await asyncpg.connect(options.dsn)
        manager = QueueManager(Queries(AsyncpgDriver(connection)))

        @manager.entrypoint("crash")
        async def sleep(job: Job) -> None:
            await asyncio.sleep(options.sleep_ms / 1000)

        try:
            yield manager
        finally:
            if not connection.is_closed():
                await connection.close()

    try:
        if options.supervised:
            await pgqueuer.run(make_manager, batch_size=batch_size, max_concurrent_tasks=options.concurrency,
                               restart_on_failure=True, dequeue_timeout=timedelta(seconds=1))
        else:
            async with make_manager() as manager:
                await manager.run(batch_size=batch_size, max_concurrent_tasks=options.concurrency,
                                  dequeue_timeout=timedelta(seconds=1))
    except Exception as error:  # what an operator would see in the log before the process ends
        print(f"exited: {type(error).__name__}: {error}", flush=True)


if __name__ == "__main__":
    uvloop.run(main())
