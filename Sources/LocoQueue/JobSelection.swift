import Foundation
import PostgresNIO

/// Which jobs an operator's bulk action applies to: every job of the given states, narrowed by
/// queue, kind and args (as Oban's `retry_all_jobs` and `cancel_all_jobs` take a query).
public struct JobSelection: Sendable, Equatable {
    public var queue: String?
    public var kind: String?
    /// A JSON object the jobs' args contain (`args @> filter`), e.g. `{"deployment_id": 42}`.
    public var args: String?
    public var states: [JobState]

    public init(queue: String? = nil, kind: String? = nil, args: String? = nil, states: [JobState]) {
        self.queue = queue
        self.kind = kind
        self.args = args
        self.states = states
    }

    /// Checks that `filter` is a JSON object, which is what `@>` on args can match.
    public static func checkArgsFilter(_ filter: String) throws(QueueError) {
        let shown = filter.count > 100 ? filter.prefix(100) + "…" : filter
        if let problem = JSONSyntax.problem(in: filter) {
            throw .invalidArgsFilter(filter: String(shown), reason: "it is not JSON (\(problem))")
        }
        guard JSONSyntax.isObject(filter) else {
            throw .invalidArgsFilter(filter: String(shown), reason: "it is JSON but not an object")
        }
    }

    /// Refuses a queue or kind name that no job can have and args that are not a JSON object;
    /// callers check before connecting, so the error names the input, not an unreachable database.
    public func check() throws(QueueError) {
        if let queue { try Names.checkQueue(queue) }
        if let kind { try Names.checkKind(kind) }
        if let args { try Self.checkArgsFilter(args) }
    }

    /// The filter as SQL over `loco_jobs`, its states limited to `allowed`.
    func condition(allowed: [JobState]) throws(QueueError) -> PostgresQuery {
        try check()
        let states = states.filter(allowed.contains)
        var binds = PostgresBindings()
        binds.append(states.map(\.rawValue))
        var sql = "state = ANY($1::text[])"
        if let queue {
            binds.append(queue)
            sql += " AND queue = $\(binds.count)"
        }
        if let kind {
            binds.append(kind)
            sql += " AND kind = $\(binds.count)"
        }
        if let args {
            binds.append(args)
            sql += " AND args @> $\(binds.count)::text::jsonb"
        }
        return PostgresQuery(unsafeSQL: sql, binds: binds)
    }
}

extension JobStore {
    /// Jobs a bulk action takes per statement: a million failed jobs are retried in many short
    /// transactions, never one that holds a million row locks.
    static let bulkBatch = 1000

    /// Runs every selected job again now, like `retry(id:)`; jobs in other states are left
    /// alone. Returns how many were retried.
    public func retry(matching selection: JobSelection, on db: some QueryRunner) async throws -> Int {
        try await inBatches(selection, allowed: JobState.retryable, on: db) { ids in
            try await retried(ids: ids, on: db).count
        }
    }

    /// Cancels every selected live job, like `cancel(id:)`: queued ones at once, running ones
    /// are asked to stop. Returns how many were still live.
    public func cancel(matching selection: JobSelection, on db: some QueryRunner) async throws -> Int {
        try await inBatches(selection, allowed: JobState.live, on: db) { ids in
            try await cancel(ids: ids, on: db)
        }
    }

    /// Fails every selected queued job for good without running it, like `discard(id:)`.
    public func discard(matching selection: JobSelection, on db: some QueryRunner) async throws -> Int {
        try await inBatches(selection, allowed: JobState.queued, on: db) { ids in
            try await discarded(ids: ids, on: db).count
        }
    }

    /// Applies `action` to the selected jobs a batch at a time, lowest id first, until a batch
    /// finds none left. Each batch starts after the last id seen, so a job the action leaves in
    /// a selected state (a running job asked to stop) is not taken again.
    private func inBatches(_ selection: JobSelection, allowed: [JobState], on db: some QueryRunner,
                           _ action: ([Int64]) async throws -> Int) async throws -> Int {
        let condition = try selection.condition(allowed: allowed)
        var total = 0
        var after: Int64 = 0
        while true {
            var binds = condition.binds
            binds.append(after)
            binds.append(Self.bulkBatch)
            let query = PostgresQuery(unsafeSQL: """
                SELECT id FROM loco_jobs WHERE \(condition.sql) AND id > $\(binds.count - 1)
                ORDER BY id LIMIT $\(binds.count)
                """, binds: binds)
            var ids: [Int64] = []
            for try await id in try await db.run(query, logger: logger).decode(Int64.self) { ids.append(id) }
            guard let last = ids.last else { return total }
            total += try await action(ids)
            after = last
            if ids.count < Self.bulkBatch { return total }
        }
    }
}
