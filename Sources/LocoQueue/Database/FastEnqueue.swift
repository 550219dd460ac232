import Logging
import PostgresNIO

/// Single enqueues on a `ReconnectingConnection` are written and read by the connection's
/// `SingleEnqueueHandler`. Behind a transaction-mode pooler, where a statement prepared on one
/// server session is unknown on the next, they are sent unprepared through PostgresNIO.
extension ReconnectingConnection {
    public func insertJob(_ job: NewJob, logger: Logger) async throws -> (id: Int64, state: String)? {
        if usePreparedStatements {
            let connection = try await connection()
            // Missing only for a connection replaced by a newer one meanwhile.
            if let handler = singleEnqueueHandler(for: connection) {
                return try await watched(connection) { handler.enqueue(job) }
            }
        }
        return try await JobStatements.enqueue(job, on: self, logger: logger)
    }
}

extension ReconnectingConnection {
    /// Its statements outside `transaction` are transactions of their own.
    public var wakesQueuesAfterCommit: Bool { true }

    /// Wakes `queues` as `WakeUpsAfterCommit` does after a transaction, within the query
    /// deadline; a refusal is logged by the connection's logger, as its handler's are.
    public func wakeUp(_ queues: [String], logger: Logger) async {
        guard !queues.isEmpty else { return }
        do {
            let connection = try await connection()
            if usePreparedStatements, let handler = singleEnqueueHandler(for: connection) {
                try await watched(connection) { handler.wakeUp(queues) }
            } else {
                _ = try await run(WakeUpsAfterCommit.wakeUpCall(queues), logger: logger).collect()
            }
        } catch {
            WakeUpsAfterCommit.refused(queues, error, refusals: wakeUpRefusals, logger: self.logger)
        }
    }
}
