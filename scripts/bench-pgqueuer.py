#!/usr/bin/env python3
"""PgQueuer, the Python Postgres queue the issue's targets come from, run through the phases of
`locod bench queue` on the same cluster, so Loco's figures have a baseline measured in the same
run instead of figures from another machine. Prints one JSON object with the same keys.

    bench-pgqueuer.py DSN [--jobs 20000] [--concurrency 10] [--latency-rate 200]
                          [--latency-seconds 10] [--backlog 1000000] [--producers 8]

The database DSN names must have PgQueuer's schema installed (`pgq install`, durable tables).
Each phase is what Loco's is:
- single enqueues: N `Queries.enqueue` calls on one asyncpg connection over TCP, each its own
  durable transaction;
- concurrent single enqueues: the same N calls from `--producers` coroutines at once, each on an
  asyncpg connection of its own;
- batches: N jobs in `enqueue` calls of 1,000;
- drain: one QueueManager (`batch_size` = concurrency, drain mode) completing N no-op jobs,
  timed from start until `run` returns with every completion written;
- start latency: one job at a time at a steady rate, to an idle worker listening in the same
  process; the handler takes its start time against the time sent in the payload;
- the same drain with a backlog of jobs queued for another entrypoint, then the plain drain
  once more; the backlog's ratio is to the mean of the two plain drains.
Every phase starts on an empty, vacuumed, checkpointed table, as Loco's do.
"""
import argparse
import asyncio
import json
import time
from datetime import timedelta

import asyncpg
import uvloop
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job
from pgqueuer.types import QueueExecutionMode


def rate(count: int, seconds: float) -> float:
    return round(count / seconds)


async def settle(connection: asyncpg.Connection, *, truncate: bool) -> None:
    if truncate:
        await connection.execute("TRUNCATE pgqueuer, pgqueuer_log")
    await connection.execute("VACUUM ANALYZE pgqueuer")
    await connection.execute("CHECKPOINT")


async def enqueue_batches(queries: Queries, entrypoint: str, jobs: int) -> None:
    left = jobs
    while left > 0:
        count = min(1000, left)
        await queries.enqueue([entrypoint] * count, [None] * count, [0] * count)
        left -= count


async def drain(dsn: str, entrypoint: str, concurrency: int) -> float:
    connection = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(connection)))

    @manager.entrypoint(entrypoint)
    async def noop(job: Job) -> None:
        pass

    began = time.perf_counter()
    await manager.run(batch_size=concurrency, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1))
    elapsed = time.perf_counter() - began
    await connection.close()
    return elapsed


async def start_latency(dsn: str, queries: Queries, rate_per_s: int, seconds: int, concurrency: int) -> dict:
    total = rate_per_s * seconds
    # Wall-clock seconds per job: when its enqueue was called, when it returned, when its handler started.
    sent, returned, started = [0.0] * total, [0.0] * total, {}
    connection = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(connection)))

    @manager.entrypoint("latency")
    async def measure(job: Job) -> None:
        started[int(job.payload.decode())] = time.time()

    worker = asyncio.create_task(manager.run(batch_size=concurrency))
    await asyncio.sleep(0.5)  # listening and idle
    start = time.perf_counter()
    for index in range(total):
        due = start + index / rate_per_s
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        sent[index] = time.time()
        await queries.enqueue("latency", str(index).encode())
        returned[index] = time.time()
    deadline = time.perf_counter() + 30
    while len(started) < total and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
    manager.shutdown.set()
    await worker
    await connection.close()
    samples = [((at - sent[i]) * 1000, (returned[i] - sent[i]) * 1000, (at - returned[i]) * 1000) for i, at in started.items()]

    def percentiles(values: list[float]) -> dict:
        ordered = sorted(values)

        def at(p: float) -> float:
            if not ordered:
                return float("nan")
            index = min(len(ordered) - 1, max(0, -(-len(ordered) * p // 1) - 1))
            return round(ordered[int(index)], 3)
        return {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)}

    slowest = sorted(samples, reverse=True)[:max(1, len(samples) // 100)]
    shares = sorted(enqueue / total_ms for total_ms, enqueue, _ in slowest)
    return {"rate_per_s": rate_per_s, "samples": len(samples), **percentiles([s[0] for s in samples]),
            "enqueue_ms": percentiles([s[1] for s in samples]), "after_enqueue_ms": percentiles([s[2] for s in samples]),
            "slowest_1pct_enqueue_share": round(shares[len(shares) // 2], 3) if shares else float("nan")}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-rate", type=int, default=200)
    parser.add_argument("--latency-seconds", type=int, default=10)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--producers", type=int, default=8)
    options = parser.parse_args()
    jobs = options.jobs

    connection = await asyncpg.connect(options.dsn)
    queries = Queries(AsyncpgDriver(connection))

    await settle(connection, truncate=True)
    began = time.perf_counter()
    for _ in range(jobs):
        await queries.enqueue("single", None)
    single = time.perf_counter() - began

    await settle(connection, truncate=True)
    producers = [await asyncpg.connect(options.dsn) for _ in range(options.producers)]

    async def produce(producer: asyncpg.Connection, count: int) -> None:
        producer_queries = Queries(AsyncpgDriver(producer))
        for _ in range(count):
            await producer_queries.enqueue("single", None)

    began = time.perf_counter()
    await asyncio.gather(*(produce(producer, jobs // options.producers + (index < jobs % options.producers))
                           for index, producer in enumerate(producers)))
    concurrent = time.perf_counter() - began
    for producer in producers:
        await producer.close()

    await settle(connection, truncate=True)
    began = time.perf_counter()
    await enqueue_batches(queries, "bench", jobs)
    batches = time.perf_counter() - began
    await settle(connection, truncate=False)
    drained = await drain(options.dsn, "bench", options.concurrency)

    await settle(connection, truncate=True)
    latency = await start_latency(options.dsn, queries, options.latency_rate, options.latency_seconds, options.concurrency)

    await settle(connection, truncate=True)
    await connection.execute("""
        INSERT INTO pgqueuer (priority, entrypoint, payload, status)
        SELECT 0, 'backlog', NULL, 'queued' FROM generate_series(1, $1::int)
        """, options.backlog)
    await enqueue_batches(queries, "bench", jobs)
    await settle(connection, truncate=False)
    drained_with_backlog = await drain(options.dsn, "bench", options.concurrency)
    # The plain drain again, after the backlog's, as `locod bench queue` does: the ratio is to
    # the mean of the plain drains on either side.
    await settle(connection, truncate=True)
    await enqueue_batches(queries, "bench", jobs)
    await settle(connection, truncate=False)
    drained_after = await drain(options.dsn, "bench", options.concurrency)
    await connection.close()

    print(json.dumps({
        "queue": "pgqueuer", "jobs": jobs, "concurrency": options.concurrency, "backlog_jobs": options.backlog,
        "enqueue_single_jobs_per_s": rate(jobs, single),
        "producers": options.producers,
        "enqueue_single_concurrent_jobs_per_s": rate(jobs, concurrent),
        "enqueue_batch_jobs_per_s": rate(jobs, batches),
        "drain_jobs_per_s": rate(jobs, drained),
        "drain_with_backlog_jobs_per_s": rate(jobs, drained_with_backlog),
        "drain_after_backlog_jobs_per_s": rate(jobs, drained_after),
        "drain_with_backlog_ratio": round(jobs / drained_with_backlog / ((jobs / drained + jobs / drained_after) / 2), 3),
        "start_latency_ms": latency,
    }, indent=2))


if __name__ == "__main__":
    uvloop.run(main())
