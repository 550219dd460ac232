import Logging
import PostgresNIO

/// Something that runs a query: a `ConnectionPool`, a `ReconnectingConnection`, or the
/// connection of a caller's transaction (so it can include queue writes).
public protocol QueryRunner: Sendable {
    func run(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence
    /// Runs a statement prepared once per connection and returns all its rows.
    func prepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row]
        where Statement.Row: Sendable
}

extension PostgresConnection: QueryRunner {
    public func run(_ query: PostgresQuery, logger: Logger) async throws -> PostgresRowSequence {
        try await self.query(query, logger: logger)
    }

    public func prepared<Statement: PostgresPreparedStatement>(_ statement: Statement, logger: Logger) async throws -> [Statement.Row]
        where Statement.Row: Sendable {
        var rows: [Statement.Row] = []
        for try await row in try await execute(statement, logger: logger) { rows.append(row) }
        return rows
    }
}
