import LocoQueue
import LocoTestSupport
import PostgresNIO
import Testing
@testable import LocoAPI

@Suite("API error log")
struct ErrorLogTests {
    @Test("an unexpected PostgreSQL error is logged with its message and SQLSTATE, never its detail, which quotes the row's values")
    func databaseErrorDetailStaysOut() async throws {
        try await TestDatabase.with { db in
            try await db.client.query("CREATE TABLE env (name text PRIMARY KEY, value text)")
            let secret = "s3cr3t-value-that-must-not-be-logged"
            try await db.client.query("INSERT INTO env VALUES (\(secret), 'x')")
            try await db.client.query("ALTER TABLE env ALTER COLUMN value SET NOT NULL")
            // The primary key's violation quotes the key; the NOT NULL one quotes the whole row.
            let statements: [PostgresQuery] = [
                "INSERT INTO env VALUES (\(secret), 'y')",
                "INSERT INTO env VALUES (\(secret + "-2"), NULL)",
            ]
            for statement in statements {
                let error = await #expect(throws: PSQLError.self) { try await db.client.query(statement) }
                let thrown = try #require(error)
                // The detail does carry the value, so the check below means something.
                #expect(thrown.serverInfo?[.detail]?.contains(secret) == true)
                let logged = ErrorMiddleware.loggable(thrown)
                #expect(!logged.contains(secret), "\(logged)")
                #expect(logged.hasPrefix("PostgreSQL said: ") && logged.contains("(SQLSTATE 23"), "\(logged)")
            }
            // Other errors keep their full description.
            #expect(ErrorMiddleware.loggable(TestSetupError("plain")) == "plain")
        }
    }
}
