import Foundation
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

    /// The table that records what was applied; made by the first migration run.
    static let bookkeeping = """
        CREATE TABLE IF NOT EXISTS loco_schema_migrations (
            component  text        NOT NULL,
            version    integer     NOT NULL,
            name       text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (component, version)
        )
        """

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
            _ = try await connection.run(PostgresQuery(unsafeSQL: Self.bookkeeping), logger: logger)
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

/// One migration as a database has it: applied (and when) or pending. `known` is false for one
/// the database has and this program does not: a newer program applied it.
public struct MigrationStatus: Sendable, Equatable {
    public let component: String
    public let version: Int
    public let name: String
    public let appliedAt: Date?
    public let known: Bool

    public var isPending: Bool { appliedAt == nil }
    /// `queue/7_cron_settings`, as `migrate` reports what it applied.
    public var label: String { "\(component)/\(version)_\(name)" }
}

extension Migrator {
    private struct Recorded: Sendable {
        var name: String
        var at: Date
    }

    /// Every migration of `sets` and every one the database records, in component order (as
    /// given) and version order. Reads only; a database never migrated has them all pending.
    public func status(_ sets: [(component: String, migrations: [Migration])]) async throws -> [MigrationStatus] {
        let recorded = try await database.transaction(timeLimit: .seconds(30)) { connection -> [String: [Int: Recorded]] in
            let exists = try await connection.run("SELECT to_regclass('loco_schema_migrations') IS NOT NULL", logger: logger)
            var hasTable = false
            for try await value in exists.decode(Bool.self) { hasTable = value }
            guard hasTable else { return [:] }
            let rows = try await connection.run("SELECT component, version, name, applied_at FROM loco_schema_migrations", logger: logger)
            var recorded: [String: [Int: Recorded]] = [:]
            for try await (component, version, name, at) in rows.decode((String, Int, String, Date).self) {
                recorded[component, default: [:]][version] = Recorded(name: name, at: at)
            }
            return recorded
        }
        var statuses: [MigrationStatus] = []
        let components = sets.map(\.component) + recorded.keys.filter { key in !sets.contains { $0.component == key } }.sorted()
        for component in components {
            let known = sets.first { $0.component == component }?.migrations ?? []
            let applied = recorded[component] ?? [:]
            let versions = Set(known.map(\.version)).union(applied.keys).sorted()
            for version in versions {
                let migration = known.first { $0.version == version }
                statuses.append(MigrationStatus(component: component, version: version,
                                                name: migration?.name ?? applied[version]?.name ?? "",
                                                appliedAt: applied[version]?.at, known: migration != nil))
            }
        }
        return statuses
    }

    /// One SQL script that applies `migrations` as `migrate` would: in one transaction, under the
    /// same advisory lock, recording each in `loco_schema_migrations`, for `psql -f` or a team's
    /// own migration tool. The statements are the ones `migrate` runs, byte for byte.
    public static func script(_ migrations: [(component: String, migration: Migration)]) -> String {
        var lines = ["-- Loco schema migrations: " + (migrations.isEmpty ? "none" : migrations.map { "\($0.component)/\($0.migration.version)_\($0.migration.name)" }.joined(separator: ", ")),
                     "BEGIN;",
                     "DO $$ BEGIN PERFORM pg_advisory_xact_lock(\(advisoryLockKey)); END $$;",
                     bookkeeping + ";"]
        func literal(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "''") + "'" }
        for (component, migration) in migrations {
            lines.append("")
            lines.append("-- \(component)/\(migration.version)_\(migration.name)")
            for statement in migration.statements {
                let trimmed = statement.trimmingCharacters(in: .whitespacesAndNewlines)
                lines.append(trimmed.hasSuffix(";") ? trimmed : trimmed + ";")
            }
            lines.append("INSERT INTO loco_schema_migrations (component, version, name) VALUES (\(literal(component)), \(migration.version), \(literal(migration.name)));")
        }
        lines.append("COMMIT;")
        return lines.joined(separator: "\n") + "\n"
    }
}
