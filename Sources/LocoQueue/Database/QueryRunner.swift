import Logging
import PostgresNIO

/// Something that runs a query: a `ConnectionPool`, a `ReconnectingConnection`, or the
/// connection of a caller's transaction (so it can include queue writes).
public protocol QueryRunner: Sendable {
    func run(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence
    /// Runs a statement prepared once per connection and returns all its rows.
    func prepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row]
        where Statement.Row: Sendable
    /// Runs the queue's single-enqueue statement (`JobStore.singleEnqueueStatement`) for `job`:
    /// the new job's id and state, or nil when its unique key is held. `JobStore.enqueue` calls
    /// it; a `ReconnectingConnection` runs it on a faster path than `prepared`.
    func insertJob(_ job: NewJob, logger: Logger) async throws -> (id: Int64, state: String)?
}

extension QueryRunner {
    public func insertJob(_ job: NewJob, logger: Logger) async throws -> (id: Int64, state: String)? {
        try await prepared(JobStatements.EnqueueOne(job: job), logger: logger).first.map { ($0.0, $0.1) }
    }
}

/// Every query Loco sends on a bare connection goes through `run` or `prepared`, never
/// PostgresNIO's `query` directly: PostgresNIO drops a query written to a connection that has
/// already closed, and its caller then waits forever (a worker's shutdown hung on this: a
/// transaction's next statement, sent after maintenance closed the connection). Checking first
/// closes that gap; on the connection's own thread, where `ReconnectingConnection` runs its
/// queries and transactions, the check and the write cannot be split by the close.
extension PostgresConnection: QueryRunner {
    public func run(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try ensureOpen()
        return try await self.query(query, logger: logger)
    }

    public func prepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row]
        where Statement.Row: Sendable {
        try ensureOpen()
        var rows: [Statement.Row] = []
        for try await row in try await execute(statement, logger: logger) { rows.append(row) }
        return rows
    }

    func ensureOpen() throws {
        if isClosed { throw ConnectionClosed() }
    }
}

/// A query was about to be sent on a connection that had closed.
/// `DatabaseURL.explain` turns it into `QueueError.databaseUnreachable`.
public struct ConnectionClosed: Error, CustomStringConvertible {
    public var description: String { "the connection was closed" }
}
