import Foundation
import Logging
import LocoQueue
import PostgresNIO

/// A fresh, migrated database on the test PostgreSQL, dropped afterwards.
///
/// The server comes from `LOCO_DATABASE_URL` (scripts/test starts one and exports it). Without
/// it the test fails and says how to get one; it is never skipped.
public struct TestDatabase: Sendable {
    public let url: DatabaseURL
    public let client: ConnectionPool
    public let logger: Logger

    public static func serverURL() throws -> DatabaseURL {
        guard let text = ProcessInfo.processInfo.environment["LOCO_DATABASE_URL"], !text.isEmpty else {
            throw TestSetupError("""
                LOCO_DATABASE_URL is not set, so there is no PostgreSQL to test against. Run the tests with \
                scripts/test (it installs and starts PostgreSQL 15), or run `scripts/services start` and export \
                the LOCO_DATABASE_URL it prints. PostgreSQL itself installs with: apt-get install -y postgresql-15
                """)
        }
        return try DatabaseURL(text)
    }

    public static var testLogger: Logger {
        var logger = Logger(label: "loco.test")
        logger.logLevel = ProcessInfo.processInfo.environment["LOCO_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .error
        return logger
    }

    /// Runs `body` with a new database migrated to the queue's schema.
    public static func with<T: Sendable>(
        migrations: [(component: String, migrations: [Migration])] = [(QueueSchema.component, QueueSchema.migrations)],
        _ body: (TestDatabase) async throws -> T
    ) async throws -> T {
        let server = try serverURL()
        let logger = testLogger
        let name = "loco_test_\(UInt64.random(in: 0...UInt64.max) % 1_000_000_000_000)"
        do {
            try await Self.admin(server, logger: logger, "CREATE DATABASE \(name)")
        } catch {
            throw TestSetupError("cannot create the test database \(name): \(server.describe(error))")
        }
        let url = server.with(database: name)
        let client = ConnectionPool(url: url, size: 8, logger: logger)
        do {
            do {
                try await Migrator(database: client, logger: logger).migrate(migrations)
            } catch {
                throw TestSetupError("cannot migrate the test database \(name): \(url.describe(error))")
            }
            let result = try await body(TestDatabase(url: url, client: client, logger: logger))
            await client.close()
            try? await Self.admin(server, logger: logger, "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
            return result
        } catch {
            await client.close()
            try? await Self.admin(server, logger: logger, "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
            throw error
        }
    }

    static func admin(_ server: DatabaseURL, logger: Logger, _ sql: String) async throws {
        let connection = try await PostgresConnection.connect(configuration: server.connectionConfiguration(), id: 1, logger: logger)
        do {
            _ = try await connection.simpleQuery(sql).get()
        } catch {
            try? await connection.close()
            throw error
        }
        try await connection.close()
    }

    /// One row, one column.
    public func scalar<T: PostgresDecodable & Sendable>(_ query: PostgresQuery, as type: T.Type = T.self) async throws -> T {
        for try await value in try await client.query(query).decode(T.self) { return value }
        throw TestSetupError("query returned no row: \(query.sql)")
    }

    /// The jobs matching `condition` (SQL over `loco_jobs`) and this database's sessions (with
    /// `everyDatabase`, the whole server's, to see what else loads it), one line each: what a test
    /// prints when jobs did not get where it waited for them to.
    public func snapshot(jobsWhere condition: String, everyDatabase: Bool = false) async -> String {
        var lines: [String] = []
        func collect(_ sql: String) async {
            do {
                for try await line in try await client.query(PostgresQuery(unsafeSQL: sql)).decode(String.self) { lines.append(line) }
            } catch {
                lines.append("(could not read: \(String(reflecting: error)))")
            }
        }
        lines.append("jobs (id, queue, kind, state, attempt/max, run_at - now, locked_by, lease left, last error):")
        await collect("""
            SELECT concat_ws(' | ', id, queue, kind, state, attempt || '/' || max_attempts, run_at - now(), locked_by,
                             lease_expires_at - now(), left(errors->-1->>'code' || ': ' || (errors->-1->>'message'), 160))
            FROM loco_jobs WHERE \(condition) ORDER BY id
            """)
        lines.append("sessions (this database, pid, application, state, wait, since start, since query, query):")
        await collect("""
            SELECT concat_ws(' | ', datname = current_database(), pid, application_name, state, wait_event_type || '/' || wait_event,
                             now() - backend_start, now() - query_start, left(query, 100))
            FROM pg_stat_activity
            WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()\(everyDatabase ? "" : " AND datname = current_database()")
            """)
        return lines.joined(separator: "\n")
    }
}

public struct TestSetupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held. The default is
/// generous because a wait that holds costs only the time it takes, and a CI machine under the
/// full suite's load once took 28 s for what takes under one second alone.
public func eventually(timeout: Duration = .seconds(30), every interval: Duration = .milliseconds(20),
                       _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return try await condition()
}
