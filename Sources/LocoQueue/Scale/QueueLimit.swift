import Foundation
import Logging
import PostgresNIO

/// How many jobs of a queue may run at once across all workers ('locod queue limit'), as Oban
/// Pro's `global_limit` and River Pro's global concurrency limits: for work that shares one
/// resource however many workers there are (builds on one disk, pushes to one registry).
public struct QueueLimit: Sendable, Codable, Equatable {
    public var queue: String
    public var limit: Int
    public var changedBy: String?
    public var updatedAt: Date

    public static let range = 1...100_000
}

extension JobStore {
    /// The first key of the locks that serialize the claims of a limited queue; the second is
    /// `hashtext(queue)`.
    static let limitLockClass: Int32 = 0x4C51_4C4D

    /// Sets `queue`'s limit across all workers and notifies them.
    public func limit(queue: String, to limit: Int, by who: String? = nil, on db: some QueryRunner) async throws -> QueueLimit {
        try await DatabaseServerError.coding {
            try Names.checkQueue(queue)
            guard QueueLimit.range.contains(limit) else {
                throw QueueError.invalidScale(reason: "the limit must be from \(QueueLimit.range.lowerBound) to \(QueueLimit.range.upperBound) (got \(limit))")
            }
            let moment = WakeUpMoment(for: db)
            let rows = try await db.run("""
                WITH set AS (
                    INSERT INTO loco_queue_limits (queue, global_limit, changed_by) VALUES (\(queue), \(limit), \(who))
                    ON CONFLICT (queue) DO UPDATE SET global_limit = EXCLUDED.global_limit, changed_by = EXCLUDED.changed_by, updated_at = now()
                    RETURNING queue, global_limit, changed_by, updated_at
                )
                SELECT queue, global_limit, changed_by, updated_at, CASE WHEN \(moment.inStatement) THEN pg_notify(\(Self.channel), 'scale:' || queue) END IS NULL FROM set
                """, logger: logger)
            var recorded: QueueLimit?
            for try await (queue, limit, by, at, _) in rows.decode((String, Int, String?, Date, Bool).self) {
                recorded = QueueLimit(queue: queue, limit: limit, changedBy: by, updatedAt: at)
            }
            if let recorded {
                await moment.wake(["scale:\(queue)"], on: db, logger: logger)
                return recorded
            }
            throw QueueError.invalidScale(reason: "the limit of queue '\(queue)' was not recorded")
        }
    }

    /// Removes `queue`'s limit and notifies the workers; false if it had none.
    public func removeLimit(queue: String, on db: some QueryRunner) async throws -> Bool {
        try await DatabaseServerError.coding {
            try Names.checkQueue(queue)
            let moment = WakeUpMoment(for: db)
            let rows = try await db.run("""
                WITH removed AS (DELETE FROM loco_queue_limits WHERE queue = \(queue) RETURNING queue)
                SELECT CASE WHEN \(moment.inStatement) THEN pg_notify(\(Self.channel), 'scale:' || queue) END IS NULL FROM removed
                """, logger: logger)
            var removed = false
            for try await _ in rows.decode(Bool.self) { removed = true }
            if removed { await moment.wake(["scale:\(queue)"], on: db, logger: logger) }
            return removed
        }
    }

    public func queueLimits(on db: some QueryRunner) async throws -> [QueueLimit] {
        try await DatabaseServerError.coding {
            let rows = try await db.run("SELECT queue, global_limit, changed_by, updated_at FROM loco_queue_limits ORDER BY queue", logger: logger)
            var limits: [QueueLimit] = []
            for try await (queue, limit, by, at) in rows.decode((String, Int, String?, Date).self) {
                limits.append(QueueLimit(queue: queue, limit: limit, changedBy: by, updatedAt: at))
            }
            return limits
        }
    }

    /// Claims as `claim` does, but no more than the queue's limit leaves free across all
    /// workers. The claims of a limited queue take turns on a transaction lock: each one's
    /// statement starts after the last one committed, so it counts the jobs that one took.
    /// `atLimit` says whether available jobs were left waiting for the limit (the producer then
    /// looks again soon: a slot that frees on another worker sends no notification).
    func claimUnderLimit(queue: String, limit: Int, worker: String, lease: Duration,
                         on db: some TransactionRunner) async throws -> (jobs: [ClaimedJob], atLimit: Bool) {
        try await db.transaction(timeLimit: .seconds(30)) { connection in
            _ = try await connection.run("SELECT pg_advisory_xact_lock(\(Self.limitLockClass), hashtext(\(queue)))", logger: logger)
            var bindings = PostgresBindings(capacity: 4)
            bindings.append(queue)
            bindings.append(limit)
            bindings.append(worker)
            bindings.append(lease.seconds)
            let running = "(SELECT count(*) FROM loco_jobs WHERE state = 'running' AND queue = $1::text)"
            let cap = "(SELECT global_limit FROM loco_queue_limits WHERE queue = $1::text)"
            let picked = JobStatements.Claim.picked.replacingOccurrences(
                of: "LIMIT $2::int8", with: "LIMIT greatest(0, least($2::int8, coalesce(\(cap) - \(running), $2::int8)))")
            let rows = try await connection.run(PostgresQuery(unsafeSQL: "WITH " + picked + "\n" + JobStatements.Claim.take, binds: bindings), logger: logger)
            var claimed: [ClaimedJob] = []
            for try await (id, kind, args, attempt, maxAttempts, runAt, createdAt, attemptedAt, hasDependents)
                in rows.decode(JobStatements.Claim.Row.self) {
                claimed.append(ClaimedJob(id: id, queue: queue, kind: kind, args: args, attempt: attempt, maxAttempts: maxAttempts,
                                          runAt: runAt, createdAt: createdAt, attemptedAt: attemptedAt, hasDependents: hasDependents))
            }
            claimed.sort { $0.id < $1.id }
            var queueOnly = PostgresBindings(capacity: 1)
            queueOnly.append(queue)
            let waiting = try await connection.run(PostgresQuery(unsafeSQL: """
                SELECT coalesce(\(cap) <= \(running), false)
                   AND EXISTS (SELECT 1 FROM loco_jobs WHERE state = 'available' AND queue = $1::text)
                """, binds: queueOnly), logger: logger)
            var atLimit = false
            for try await value in waiting.decode(Bool.self) { atLimit = value }
            return (claimed, atLimit)
        }
    }
}
