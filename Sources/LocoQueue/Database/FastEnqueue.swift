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
