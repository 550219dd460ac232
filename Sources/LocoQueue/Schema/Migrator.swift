import Logging
import PostgresNIO

/// One versioned schema change of one component.
public struct Migration: Sendable {
    public let version: Int
    public let name: String
    /// Applied in order, one statement each (the extended protocol takes one at a time).
    public let statements: [String]

    public init(version: Int, name: String, statements: [String]) {
        self.version = version
        self.name = name
        self.statements = statements
    }
}

/// Applies migrations in version order, each once, in one transaction per run.
///
/// Safe when several processes run it at once: they serialize on a transaction-level advisory
/// lock, and the later ones find everything applied.
public struct Migrator: Sendable {
    /// Arbitrary constant shared by every Loco process; the lock is held only during migration.
    static let advisoryLockKey: Int64 = 0x4C4F_434F_4D49_4752

    public let database: any TransactionRunner
    public let logger: Logger

    public init(database: any TransactionRunner, logger: Logger) {
        self.database = database
        self.logger = logger
    }

    /// Applies what is missing of each `(component, migrations)` and returns the names applied.
    @discardableResult
    public func migrate(_ sets: [(component: String, migrations: [Migration])]) async throws -> [String] {
        // No time limit: it may wait for another process's migrations, and an index built on a
        // big table takes as long as it takes.
        try await database.transaction(timeLimit: nil) { connection in
            _ = try await connection.run("SELECT pg_advisory_xact_lock(\(Self.advisoryLockKey))", logger: logger)
            _ = try await connection.run("""
                CREATE TABLE IF NOT EXISTS loco_schema_migrations (
                    component  text        NOT NULL,
                    version    integer     NOT NULL,
                    name       text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (component, version)
                )
                """, logger: logger)
            var applied: [String] = []
            for set in sets {
                var done = Set<Int>()
                let rows = try await connection.run(
                    "SELECT version FROM loco_schema_migrations WHERE component = \(set.component)", logger: logger)
                for try await version in rows.decode(Int.self) { done.insert(version) }
                for migration in set.migrations.sorted(by: { $0.version < $1.version }) where !done.contains(migration.version) {
                    do {
                        for statement in migration.statements {
                            _ = try await connection.run(PostgresQuery(unsafeSQL: statement), logger: logger)
                        }
                    } catch let error as PSQLError {
                        let reason = error.serverInfo?[.message] ?? "\(error.code)"
                        throw QueueError.migrationFailed(version: migration.version, name: migration.name, reason: reason)
                    }
                    _ = try await connection.run("""
                        INSERT INTO loco_schema_migrations (component, version, name)
                        VALUES (\(set.component), \(migration.version), \(migration.name))
                        """, logger: logger)
                    applied.append("\(set.component)/\(migration.version)_\(migration.name)")
                }
            }
            return applied
        }
    }
}
