import Foundation
@testable import LocoQueue
import LocoTestSupport
import Logging
import PostgresNIO
import Synchronization
import Testing

/// Presence of workers without a session of their own (behind a pooler, or `--poll-only`): a row
/// touched every second instead of a lock.
@Suite("Presence of poll-only workers")
struct PooledPresenceTests {
    /// Makes job `id` running under `worker` with a 30 s lease, as a claim would.
    func markRunning(_ id: Int64, by worker: String, _ db: TestDatabase) async throws {
        _ = try await db.scalar("""
            UPDATE loco_jobs SET state = 'running', locked_by = \(worker), attempt = 1, attempted_at = now(),
                lease_expires_at = now() + interval '30 seconds'
            WHERE id = \(id) RETURNING id
            """, as: Int64.self)
    }

    func leaseLeft(_ id: Int64, _ db: TestDatabase) async throws -> Double {
        try await db.scalar("SELECT extract(epoch FROM lease_expires_at - now())::float8 FROM loco_jobs WHERE id = \(id)", as: Double.self)
    }

    @Test("a presence row: one process per worker id, present while touched, gone after its grace or at once when stopped; only a gone worker's leases are cut, and the cut is counted on its row")
    func presenceRow() async throws {
        try await TestDatabase.with { db in
            let store = db.store
            // Wide enough that the statements between a touch and a check fit in it on a loaded
            // CI machine (5 s did not, once).
            let grace = Duration.seconds(20)
            #expect(try await store.touchPresence(worker: "w", instance: "a", queues: ["build"], goneAfter: grace, on: db.client) == 0)
            #expect(try await store.touchPresence(worker: "w", instance: "a", queues: ["build"], goneAfter: grace, on: db.client) == 0)
            #expect(try await store.touchPresence(worker: "w", instance: "b", queues: ["build"], goneAfter: grace, on: db.client) == nil,
                    "a second live process with the same worker id does not take the row")
            var listed = try #require(try await store.workers(on: db.client).first { $0.id == "w" })
            #expect(listed.present && listed.pollOnly && listed.queues == ["build"] && listed.lastSeenAt != nil, "\(listed)")
            #expect(try await store.isKnown(queue: "build", on: db.client))

            let job = try await store.enqueue(NewJob(queue: "build", kind: "k"), on: db.client)
            try await markRunning(job.id, by: "w", db)
            #expect(try await store.touchPresence(worker: "w", instance: "a", queues: ["build"], goneAfter: grace, on: db.client) == 0)
            #expect(try await store.cutSilentWorkersLeases(grace: grace, on: db.client).isEmpty, "a worker seen within its grace keeps its leases")
            listed = try #require(try await store.workers(on: db.client).first { $0.id == "w" })
            #expect(listed.runningJobs == 1)

            _ = try await db.scalar("UPDATE loco_worker_beats SET seen_at = now() - interval '21 seconds' WHERE id = 'w' RETURNING id", as: String.self)
            #expect(try await store.workers(on: db.client).first { $0.id == "w" }?.present == false)
            let cut = try await store.cutSilentWorkersLeases(grace: grace, on: db.client)
            #expect(cut.map(\.id) == [job.id] && cut.map(\.worker) == ["w"], "\(cut)")
            #expect(try await leaseLeft(job.id, db) <= 20.5)
            #expect(try await store.cutSilentWorkersLeases(grace: grace, on: db.client).isEmpty, "a lease already as short as the grace is not cut again")
            #expect(try await store.touchPresence(worker: "w", instance: "a", queues: ["build"], goneAfter: grace, on: db.client) == 1,
                    "the worker learns at its next touch that its leases were cut")

            // A graceful stop: gone at once, and another process may take the id (its count anew).
            try await store.leavePresence(worker: "w", instance: "a", on: db.client)
            #expect(try await store.workers(on: db.client).first { $0.id == "w" }?.present == false)
            #expect(try await store.touchPresence(worker: "w", instance: "b", queues: ["build"], goneAfter: grace, on: db.client) == 0)

            // A row left in the lock workers' table by an earlier process with this id (no session
            // holds its lock) would have this one's leases cut as a dead session's: the touch
            // unlists it.
            _ = try await db.scalar("INSERT INTO loco_workers (id) VALUES ('w') RETURNING id", as: String.self)
            #expect(try await store.touchPresence(worker: "w", instance: "b", queues: ["build"], goneAfter: grace, on: db.client) == 0)
            #expect(try await db.scalar("SELECT count(*) FROM loco_workers WHERE id = 'w'", as: Int64.self) == 0)

            // Gone for an hour with no running job: forgotten.
            _ = try await db.scalar("UPDATE loco_jobs SET state = 'completed', finalized_at = now() WHERE id = \(job.id) RETURNING id", as: Int64.self)
            _ = try await db.scalar("UPDATE loco_worker_beats SET seen_at = now() - interval '2 hours' WHERE id = 'w' RETURNING id", as: String.self)
            #expect(try await store.forgetSilentWorkers(olderThan: .seconds(3600), on: db.client) == 1)
            #expect(try await store.workers(on: db.client).isEmpty)
        }
    }

    @Test("on a database without migration 10 (no presence rows), a poll-only worker still runs its jobs (rescued by lease alone), the missing table is not counted as a database error, and 'locod queue pause' still pauses, only without its typo note")
    func withoutThePresenceRows() async throws {
        try await TestDatabase.with(migrations: [(QueueSchema.component, Array(QueueSchema.migrations.prefix(9)))]) { db in
            #expect(try await db.scalar("SELECT to_regclass('loco_worker_beats') IS NULL", as: Bool.self) == true)
            var handlers = JobHandlers()
            handlers.register(kind: "test.ok") { _, _ in }
            var configuration = fastConfiguration([("old", 1)])
            configuration.pollOnly = true
            try await db.withWorker(configuration, handlers: handlers) { _ in
                let job = try await db.store.enqueue(NewJob(queue: "old", kind: "test.ok"), on: db.client)
                try await db.wait(for: job.id, toBe: .completed)
            }
            // What the rescuer and pruner meet there is told apart from a failure worth counting
            // (a timing check of the worker's metrics counted the full run's connect timeouts too).
            let cutError = await #expect(throws: (any Error).self) { try await db.store.cutSilentWorkersLeases(grace: .seconds(5), on: db.client) }
            let forgetError = await #expect(throws: (any Error).self) { try await db.store.forgetSilentWorkers(olderThan: .seconds(3600), on: db.client) }
            #expect(cutError.map(JobStore.lacksPresenceRows) == true, "\(String(describing: cutError))")
            #expect(forgetError.map(JobStore.lacksPresenceRows) == true, "\(String(describing: forgetError))")
            #expect(!JobStore.lacksPresenceRows(QueueError.databaseUnreachable(endpoint: "db:5432", reason: "the database did not answer in time")))
            let paused = try await runCommand(try Repo.binary("locod"), ["queue", "pause", "nobody-works-this"],
                                              environment: ["LOCO_DATABASE_URL": db.url.urlString])
            #expect(paused.status == 0 && paused.output.contains("queue nobody-works-this paused"), "\(paused.output)")
            #expect(try await db.store.pausedQueues(on: db.client).map(\.queue) == ["nobody-works-this"])
        }
    }

    @Test("behind a real PgBouncer, a poll-only worker that a rescuer took for gone (its row unseen) renews its cut lease at its next touch: its job runs once")
    func stalledWorkerKeepsItsJob() async throws {
        try await TestDatabase.with { db in
            let bouncer = try await PgBouncer.start(before: db.url, serverConnections: 4)
            defer { bouncer.stop() }
            let url = try DatabaseURL(bouncer.url.urlString + "?pgbouncer=true")
            let release = OneShotEvent()
            let runs = Mutex(0)
            var handlers = JobHandlers()
            handlers.register(kind: "test.held") { _, _ in
                runs.withLock { $0 += 1 }
                await release.wait()
            }
            var configuration = fastConfiguration([("pooled", 2)], workerID: "stalling")
            // Long enough that the renewal has time even under a full run's load; without it,
            // the job would be rescued when the cut lease ends.
            configuration.orphanGrace = .seconds(10)
            try await db.withWorker(configuration, handlers: handlers, url: url) { worker in
                #expect(worker.pollsOnly)
                let job = try await db.store.enqueue(NewJob(queue: "pooled", kind: "test.held"), on: db.client)
                try await db.wait(for: job.id, toBe: .running)
                #expect(await eventually { (try? await db.store.workers(on: db.client).first { $0.id == "stalling" }?.present) == true },
                        "a poll-only worker is listed as present")
                // What a rescuer does when the worker's touches stop for its grace (a stall): the
                // row goes stale and the leases are cut, in one transaction so the worker's next
                // touch comes after both.
                let cut = try await db.client.transaction { connection in
                    _ = try await connection.query("UPDATE loco_worker_beats SET seen_at = now() - interval '1 hour' WHERE id = 'stalling'", logger: db.logger)
                    return try await db.store.cutSilentWorkersLeases(grace: .seconds(10), on: connection)
                }
                #expect(cut.map(\.id) == [job.id], "\(cut)")
                #expect(await eventually(timeout: .seconds(8)) { ((try? await leaseLeft(job.id, db)) ?? 0) > 15 },
                        "the worker renewed the lease the rescuer had cut to 10 s")
                release.set()
                let done = try await db.wait(for: job.id, toBe: .completed)
                #expect(done.attempt == 1 && done.errors.isEmpty, "\(done.errors)")
                #expect(runs.withLock { $0 } == 1)
            }
        }
    }
}
