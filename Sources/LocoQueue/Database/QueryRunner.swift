import Logging
import PostgresNIO

/// Something that runs a query: a `ConnectionPool`, a `ReconnectingConnection`, or the
/// connection of a caller's transaction (so it can include queue writes).
public protocol QueryRunner: Sendable {
    func run(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence
    /// Runs a statement prepared once per connection and returns all its rows.
    func prepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row]
        where Statement.Row: Sendable
    /// Runs the queue's single-enqueue statement for `job` (`JobStore.singleEnqueueStatement`, or
    /// its twin with ON CONFLICT for a job with a unique key):
    /// the new job's id and state, or nil when its unique key is held. `JobStore.enqueue` calls
    /// it; a `ReconnectingConnection` runs it on a faster path than `prepared`.
    func insertJob(_ job: NewJob, logger: Logger) async throws -> (id: Int64, state: String)?
    /// Whether each statement run here is a transaction of its own, whose jobs' queues this
    /// runner can wake once it has committed (`wakeUp(_:logger:)`) rather than by a NOTIFY in
    /// the statement. PostgreSQL refuses a NOTIFY at commit (a full NOTIFY queue, a
    /// `lock_timeout` on its lock), which rolls the statement back after its answer, with the
    /// new jobs' ids in it, has reached the client. False for a bare connection: it may be in
    /// its caller's transaction.
    var wakesQueuesAfterCommit: Bool { get }
    /// Wakes the workers of `queues` in a transaction of its own; a refusal is logged, not
    /// thrown: the jobs are in, and workers polling find them.
    func wakeUp(_ queues: [String], logger: Logger) async
}

extension QueryRunner {
    public func insertJob(_ job: NewJob, logger: Logger) async throws -> (id: Int64, state: String)? {
        try await JobStatements.enqueue(job, on: self, logger: logger)
    }

    public var wakesQueuesAfterCommit: Bool { false }

    public func wakeUp(_ queues: [String], logger: Logger) async {}
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
        guard StatementPreparation.byName else { return try await unprepared(statement, logger: logger) }
        try ensureOpen()
        var rows: [Statement.Row] = []
        for try await row in try await execute(statement, logger: logger) { rows.append(row) }
        return rows
    }

    /// `statement`'s SQL and bindings sent as an ordinary query: nothing is left in the session.
    func unprepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row] {
        var rows: [Statement.Row] = []
        let query = PostgresQuery(unsafeSQL: Statement.sql, binds: try statement.makeBindings())
        for try await row in try await run(query, logger: logger) { rows.append(try statement.decodeRow(row)) }
        return rows
    }

    func ensureOpen() throws {
        if isClosed { throw ConnectionClosed() }
    }
}

/// Whether statements may be prepared by name on the bare connection at hand. False in the body
/// of a transaction whose `ReconnectingConnection` prepares nothing (behind a pooler in
/// transaction mode): that body gets the `PostgresConnection` itself, and a statement the
/// connection remembers preparing may not exist in the server session of this transaction.
enum StatementPreparation {
    @TaskLocal static var byName = true
}

/// A query was about to be sent on a connection that had closed.
/// `DatabaseURL.explain` turns it into `QueueError.databaseUnreachable`.
public struct ConnectionClosed: Error, CustomStringConvertible {
    public var description: String { "the connection was closed" }
}
