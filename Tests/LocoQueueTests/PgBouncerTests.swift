import Foundation
@testable import LocoQueue
import LocoTestSupport
import Logging
import PostgresNIO
import Synchronization
import Testing

@Suite("Through a real PgBouncer in transaction pooling")
struct PgBouncerTests {
    @Test("with ?pgbouncer=true, producers and a worker through PgBouncer (2 server connections for many clients): single, batch and transactional enqueues, retries, dependencies, a cancel")
    func transactionPooling() async throws {
        try await TestDatabase.with { db in
            let bouncer = try await PgBouncer.start(before: db.url, serverConnections: 2)
            defer { bouncer.stop() }
            // Without the mark, statements prepared by name clash across the server sessions clients share.
            let unmarked = ConnectionPool(url: bouncer.url, size: 4, logger: db.logger)
            let refused = await #expect(throws: (any Error).self) {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<4 {
                        group.addTask { for _ in 0..<25 { _ = try await db.store.enqueue(NewJob(queue: "unmarked", kind: "test.ok"), on: unmarked) } }
                    }
                    try await group.waitForAll()
                }
            }
            // Missing in the next session (26000), or already there from another client's (42P05).
            #expect(["26000", "42P05"].contains((refused as? DatabaseServerError)?.sqlState), "\(String(describing: refused))")
            await unmarked.close()

            let url = try DatabaseURL(bouncer.url.urlString + "?pgbouncer=true")
            #expect(url.transactionPooler && url.description.hasSuffix("?pgbouncer=true"), "\(url)")
            let store = db.store
            let producers = ConnectionPool(url: url, size: 4, logger: db.logger)

            let runs = Mutex<[Int64: Int]>([:])
            var handlers = JobHandlers()
            handlers.register(kind: "test.ok") { _, context in runs.withLock { $0[context.id, default: 0] += 1 } }
            handlers.register(kind: "test.flaky") { _, context in
                runs.withLock { $0[context.id, default: 0] += 1 }
                if context.attempt < 3 { throw JobFailure.retryable("busy", "not yet") }
            }
            handlers.register(kind: "test.long") { _, _ in try await Task.sleep(for: .seconds(60)) }
            var configuration = fastConfiguration([("pooled", 4)])
            // The cancel is seen at the next heartbeat. The lease stays 30 s: with a 3 s one, under a
            // full run's load some heartbeats queued behind the producers at the pooler for longer,
            // and their jobs were rescued and ran twice (at least once, as designed, but not this test's point).
            configuration.heartbeatInterval = .seconds(1)

            try await db.withWorker(configuration, handlers: handlers, url: url) { worker in
                // It polls: LISTEN would stay with one server session.
                #expect(worker.pollsOnly)
                // Single enqueues from 8 tasks at once on 4 client connections sharing 2 server ones.
                let singles = try await withThrowingTaskGroup(of: [Int64].self) { group in
                    for _ in 0..<8 {
                        group.addTask {
                            var ids: [Int64] = []
                            for _ in 0..<25 { ids.append(try await store.enqueue(NewJob(queue: "pooled", kind: "test.ok"), on: producers).id) }
                            return ids
                        }
                    }
                    return try await group.reduce(into: []) { $0 += $1 }
                }
                let batch = try await store.enqueueMany(Array(repeating: NewJob(queue: "pooled", kind: "test.ok"), count: 50), on: producers).map(\.id)
                // Transactions that enqueue a parent and its child, as the API creates a deployment's jobs.
                var chains: [(Int64, Int64)] = []
                for _ in 0..<10 {
                    chains.append(try await producers.transaction { connection in
                        let parent = try await store.enqueue(NewJob(queue: "pooled", kind: "test.flaky"), on: connection)
                        let child = try await store.enqueue(NewJob(queue: "pooled", kind: "test.ok", dependsOn: [parent.id]), on: connection)
                        return (parent.id, child.id)
                    })
                }
                let long = try await store.enqueue(NewJob(queue: "pooled", kind: "test.long"), on: producers)
                try await db.wait(for: long.id, toBe: .running)
                #expect(try await store.cancel(id: long.id, on: producers) == .running)
                _ = try await db.wait(for: long.id, toBe: .cancelled, timeout: .seconds(30))

                let all = singles + batch + chains.flatMap { [$0.0, $0.1] }
                #expect(await eventually(timeout: .seconds(60)) {
                    (try? await db.scalar("SELECT count(*) FROM loco_jobs WHERE id = ANY(\(all)) AND state = 'completed'", as: Int64.self)) == Int64(all.count)
                })
                let counts = runs.withLock { $0 }
                #expect(all.allSatisfy { counts[$0] != nil }, "jobs that never ran")
                #expect(chains.allSatisfy { counts[$0.0] == 3 && counts[$0.1] == 1 }, "\(chains.map { (counts[$0.0], counts[$0.1]) })")
                let again = (singles + batch).filter { counts[$0] != 1 }
                var histories: [String] = []
                for id in again.prefix(5) {
                    let job = try await store.job(id: id, on: db.client)
                    histories.append("job \(id) ran \(counts[id] ?? 0)×: \(job?.errors.map { "\($0.code) at \($0.at)" } ?? [])")
                }
                #expect(again.isEmpty, "\(again.count) jobs did not run exactly once: \(histories)")
            }
            await producers.close()

            // locod through the marked URL: migrations (a transaction-level lock), stats.
            let locod = try Repo.binary("locod")
            for arguments in [["migrate"], ["migrate", "check"], ["queue", "stats", "--output", "json"]] {
                let (status, output) = try await runCommand(locod, arguments + ["--database-url", url.urlString])
                #expect(status == 0, "locod \(arguments.joined(separator: " ")): \(output)")
                if arguments[0] == "queue" { #expect(output.contains("\"pooled\""), "\(output)") }
            }
        }
    }
}
