import Foundation
import PostgresNIO

/// A concurrency an operator set at run time for a queue's pools ('locod queue scale'), as
/// Oban's `scale_queue` does: on every worker of the queue, or on one. It beats each worker's
/// own `--concurrency` until reset; a worker's own scale beats the one for every worker.
public struct QueueScale: Sendable, Codable, Equatable {
    public var queue: String
    /// nil: every worker that works the queue.
    public var worker: String?
    public var concurrency: Int
    public var changedBy: String?
    public var updatedAt: Date

    /// The concurrencies a scale may set, as `--concurrency` takes them.
    public static let range = WorkerConfiguration.concurrencyRange
}

extension JobStore {
    /// Sets `queue`'s concurrency on every worker (`worker` nil) or on one, and notifies the
    /// workers, which apply it at once (and within a few seconds without notifications).
    public func scale(queue: String, to concurrency: Int, worker: String? = nil, by who: String? = nil,
                      on db: some QueryRunner) async throws -> QueueScale {
        try await DatabaseServerError.coding {
            try Names.checkQueue(queue)
            guard QueueScale.range.contains(concurrency) else {
                throw QueueError.invalidScale(reason: "the concurrency must be from \(QueueScale.range.lowerBound) to \(QueueScale.range.upperBound) (got \(concurrency))")
            }
            if let worker, worker.isEmpty { throw QueueError.invalidScale(reason: "the worker id is empty") }
            let moment = WakeUpMoment(for: db)
            let rows = try await db.run("""
                WITH set AS (
                    INSERT INTO loco_queue_scales (queue, worker, concurrency, changed_by)
                    VALUES (\(queue), \(worker ?? ""), \(concurrency), \(who))
                    ON CONFLICT (queue, worker) DO UPDATE
                        SET concurrency = EXCLUDED.concurrency, changed_by = EXCLUDED.changed_by, updated_at = now()
                    RETURNING queue, worker, concurrency, changed_by, updated_at
                )
                SELECT queue, worker, concurrency, changed_by, updated_at, CASE WHEN \(moment.inStatement) THEN pg_notify(\(Self.channel), 'scale:' || queue) END IS NULL FROM set
                """, logger: logger)
            var recorded: QueueScale?
            for try await (queue, worker, concurrency, by, at, _) in rows.decode((String, String, Int, String?, Date, Bool).self) {
                recorded = QueueScale(queue: queue, worker: worker.isEmpty ? nil : worker, concurrency: concurrency, changedBy: by, updatedAt: at)
            }
            if let recorded {
                await moment.wake(["scale:\(queue)"], on: db, logger: logger)
                return recorded
            }
            throw QueueError.invalidScale(reason: "the scale of queue '\(queue)' was not recorded")
        }
    }

    /// Removes the scale of `queue` for every worker (`worker` nil) or for one, and notifies the
    /// workers; false if there was none.
    public func resetScale(queue: String, worker: String? = nil, on db: some QueryRunner) async throws -> Bool {
        try await DatabaseServerError.coding {
            try Names.checkQueue(queue)
            let moment = WakeUpMoment(for: db)
            let rows = try await db.run("""
                WITH removed AS (DELETE FROM loco_queue_scales WHERE queue = \(queue) AND worker = \(worker ?? "") RETURNING queue)
                SELECT CASE WHEN \(moment.inStatement) THEN pg_notify(\(Self.channel), 'scale:' || queue) END IS NULL FROM removed
                """, logger: logger)
            var removed = false
            for try await _ in rows.decode(Bool.self) { removed = true }
            if removed { await moment.wake(["scale:\(queue)"], on: db, logger: logger) }
            return removed
        }
    }

    /// Every scale set, by queue, the one for every worker first.
    public func queueScales(on db: some QueryRunner) async throws -> [QueueScale] {
        try await DatabaseServerError.coding {
            let rows = try await db.run(
                "SELECT queue, worker, concurrency, changed_by, updated_at FROM loco_queue_scales ORDER BY queue, worker", logger: logger)
            var scales: [QueueScale] = []
            for try await (queue, worker, concurrency, by, at) in rows.decode((String, String, Int, String?, Date).self) {
                scales.append(QueueScale(queue: queue, worker: worker.isEmpty ? nil : worker, concurrency: concurrency, changedBy: by, updatedAt: at))
            }
            return scales
        }
    }

    /// The scales that apply to `worker`, by queue: its own where it has one, else the one for
    /// every worker.
    func scales(of worker: String, on db: some QueryRunner) async throws -> [String: QueueScale] {
        var applying: [String: QueueScale] = [:]
        for scale in try await queueScales(on: db) where scale.worker == nil || scale.worker == worker {
            if scale.worker != nil || applying[scale.queue] == nil { applying[scale.queue] = scale }
        }
        return applying
    }
}
