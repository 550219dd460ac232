import Foundation
import Logging
import LocoQueue
import LocoTestSupport
import PostgresNIO
import Testing

/// Connecting as libpq's URL parameters say (sslmode, sslrootcert, sslcert, sslkey,
/// application_name), against a real PostgreSQL with TLS on, and each way a server refuses a
/// connection named by its own code.
@Suite("Database connections: TLS and refusals")
struct DatabaseConnectionTests {
    enum Outcome: Equatable, CustomStringConvertible {
        case connected(tls: Bool)
        case refused(code: String, message: String)

        var description: String {
            switch self {
            case let .connected(tls): "connected (\(tls ? "TLS" : "no TLS"))"
            case let .refused(code, message): "\(code): \(message)"
            }
        }

        func refused(_ code: String, saying words: String...) -> Bool {
            guard case let .refused(actual, message) = self else { return false }
            return actual == code && words.allSatisfy { message.contains($0) }
        }
    }

    /// Connects once by `text`: whether the session uses TLS, or the coded error it got.
    static func connect(_ text: String) async -> Outcome {
        let logger = TestDatabase.testLogger
        let url: DatabaseURL
        do {
            url = try DatabaseURL(text)
        } catch {
            return .refused(code: error.code, message: error.message)
        }
        // Through ReconnectingConnection, which connects the socket itself (SingleEnqueueHandler).
        let db = ReconnectingConnection(url: url, logger: logger)
        do {
            var tls = false
            for try await row in try await db.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", logger: logger) {
                tls = try row.decode(Bool.self)
            }
            await db.close()
            return .connected(tls: tls)
        } catch {
            await db.close()
            let explained = url.explain(error)
            guard let coded = explained as? QueueError else { return .refused(code: "uncoded", message: "\(explained)") }
            return .refused(code: coded.code, message: coded.message + " | " + coded.hint)
        }
    }

    /// The one value `sql` selects.
    static func scalar<T: PostgresDecodable>(_ sql: String, as type: T.Type, on runner: some QueryRunner) async throws -> T {
        for try await value in try await runner.run(PostgresQuery(unsafeSQL: sql), logger: TestDatabase.testLogger).decode(T.self) { return value }
        throw TestSetupError("no row from \(sql)")
    }

    @Test("sslmode=require against a server without TLS is database_tls_unavailable, not a bare PostgresNIO error")
    func tlsUnavailable() async throws {
        let server = try TestDatabase.serverURL()
        let base = "postgres://\(server.username)@\(server.host):\(server.port)/\(server.database)"
        let required = await Self.connect(base + "?sslmode=require")
        #expect(required.refused("database_tls_unavailable", saying: "does not offer TLS", "sslmode=require", "ssl = on"), "\(required)")
        // libpq's default, prefer, goes on without TLS there; so does disable.
        #expect(await Self.connect(base) == .connected(tls: false))
        #expect(await Self.connect(base + "?sslmode=disable") == .connected(tls: false))
        #expect(await Self.connect(base + "?sslmode=allow") == .connected(tls: false))
        let missing = await Self.connect("postgres://\(server.username)@\(server.host):\(server.port)/loco_no_such_database")
        #expect(missing.refused("database_not_found", saying: "has no database 'loco_no_such_database'", "CREATE DATABASE"), "\(missing)")
    }

    @Test("TLS as libpq's sslmode says: prefer takes it, require encrypts, verify-ca and verify-full check the CA and the name; logins refused by name; a worker runs over verify-full, and over allow in the clear")
    func tls() async throws {
        try await PrivatePostgres.with(tls: true) { try await tlsScenario($0) }
    }

    func tlsScenario(_ postgres: PrivatePostgres) async throws {
        let folder = try #require(postgres.tlsFolder)
        let work = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("loco-tls-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        try await TestCertificates.make("other-ca", subject: "/CN=Another CA", in: work, signedBy: nil)
        try await TestCertificates.make("client", subject: "/CN=certuser", in: work, signedBy: folder)

        // Users that show how a server refuses: a password, TLS only, a client certificate.
        let admin = ConnectionPool(url: postgres.url, size: 1, logger: TestDatabase.testLogger)
        do {
            try await scenario(postgres, admin: admin, folder: folder, work: work)
        } catch {
            await admin.close()
            throw error
        }
        await admin.close()
    }

    func scenario(_ postgres: PrivatePostgres, admin: ConnectionPool, folder: URL, work: URL) async throws {
        let ca = folder.appendingPathComponent("ca.crt").path
        let otherCA = work.appendingPathComponent("other-ca.crt").path
        let port = postgres.url.port
        func url(_ user: String = "postgres", host: String = "127.0.0.1", _ query: String = "") -> String {
            "postgres://\(user)@\(host):\(port)/postgres" + (query.isEmpty ? "" : "?" + query)
        }
        for statement in ["CREATE ROLE pw LOGIN PASSWORD 'hunter2'", "CREATE ROLE tlsonly LOGIN", "CREATE ROLE certuser LOGIN", "CREATE ROLE gssuser LOGIN"] {
            for try await _ in try await admin.run(PostgresQuery(unsafeSQL: statement), logger: TestDatabase.testLogger) {}
        }
        let hbaFile = try await Self.scalar("SHOW hba_file", as: String.self, on: admin)
        let rules = try String(contentsOfFile: hbaFile, encoding: .utf8)
        try ("hostnossl all tlsonly 127.0.0.1/32 reject\nhost all pw 127.0.0.1/32 scram-sha-256\nhostssl all certuser 127.0.0.1/32 cert\nhost all gssuser 127.0.0.1/32 gss\n" + rules)
            .write(toFile: hbaFile, atomically: false, encoding: .utf8)
        _ = try await Self.scalar("SELECT pg_reload_conf()", as: Bool.self, on: admin)
        #expect(await eventually(timeout: .seconds(10)) { await Self.connect(url("tlsonly", "sslmode=disable")) != .connected(tls: false) })

        // libpq's default (prefer) takes TLS when the server offers it; disable does without.
        #expect(await Self.connect(url()) == .connected(tls: true))
        #expect(await Self.connect(url("postgres", "sslmode=disable")) == .connected(tls: false))
        // require encrypts without checking the certificate (its CA is the server's own)...
        #expect(await Self.connect(url("postgres", "sslmode=require")) == .connected(tls: true))
        // ...unless a root certificate is given: then, as in libpq, the chain is checked.
        let requireOther = await Self.connect(url("postgres", "sslmode=require&sslrootcert=\(otherCA)"))
        #expect(requireOther.refused("database_certificate_rejected", saying: "is not signed by a CA in sslrootcert \(otherCA)", "sslmode=require"), "\(requireOther)")
        // verify-full checks against the system's CAs when no sslrootcert is given.
        let unknownCA = await Self.connect(url("postgres", "sslmode=verify-full"))
        #expect(unknownCA.refused("database_certificate_rejected", saying: "127.0.0.1:\(port)", "the system's CAs", "sslrootcert=/path/to/ca.pem"), "\(unknownCA)")
        let wrongCA = await Self.connect(url("postgres", "sslmode=verify-ca&sslrootcert=\(otherCA)"))
        #expect(wrongCA.refused("database_certificate_rejected", saying: "sslmode=verify-ca"), "\(wrongCA)")
        // With the server's CA, by address and by name (the certificate holds both).
        #expect(await Self.connect(url("postgres", "sslmode=verify-full&sslrootcert=\(ca)")) == .connected(tls: true))
        #expect(await Self.connect(url("postgres", host: "localhost", "sslmode=verify-full&sslrootcert=\(ca)")) == .connected(tls: true))
        #expect(await Self.connect(url("postgres", "sslmode=verify-ca&sslrootcert=\(ca)")) == .connected(tls: true))

        // Logins the server refuses, each said by PostgreSQL's own words, never the password.
        let wrongPassword = await Self.connect("postgres://pw:wrong-secret@127.0.0.1:\(port)/postgres")
        #expect(wrongPassword.refused("database_login_refused", saying: "refused to log user 'pw' in", "password authentication failed", "28P01"), "\(wrongPassword)")
        #expect(!"\(wrongPassword)".contains("wrong-secret"))
        let noPassword = await Self.connect(url("pw"))
        #expect(noPassword.refused("database_login_refused", saying: "asks for a password and the URL gives none"), "\(noPassword)")
        #expect(await Self.connect("postgres://pw:hunter2@127.0.0.1:\(port)/postgres?sslmode=verify-full&sslrootcert=\(ca)") == .connected(tls: true))
        try await passwordsForLocod(url("pw"), work: work)
        let plainOnly = await Self.connect(url("tlsonly", "sslmode=disable"))
        #expect(plainOnly.refused("database_login_refused", saying: "no encryption", "28000", "sslmode"), "\(plainOnly)")
        #expect(await Self.connect(url("tlsonly")) == .connected(tls: true))
        // allow, as libpq: without TLS when the server takes that, with TLS when it refuses it.
        #expect(await Self.connect(url("postgres", "sslmode=allow")) == .connected(tls: false))
        #expect(await Self.connect(url("tlsonly", "sslmode=allow")) == .connected(tls: true))
        // A way of logging in PostgresNIO does not speak (Kerberos, pg_hba's gss): said as such.
        let kerberos = await Self.connect(url("gssuser"))
        #expect(kerberos.refused("database_login_refused", saying: "refused to log user 'gssuser' in", "a way of logging in Loco does not speak"), "\(kerberos)")
        // A login by client certificate (pg_hba's cert: the certificate's CN is the user).
        let noCertificate = await Self.connect(url("certuser", "sslmode=require"))
        #expect(noCertificate.refused("database_login_refused", saying: "client certificate"), "\(noCertificate)")
        let client = "sslcert=\(work.appendingPathComponent("client.crt").path)&sslkey=\(work.appendingPathComponent("client.key").path)"
        #expect(await Self.connect(url("certuser", "sslmode=verify-full&sslrootcert=\(ca)&\(client)")) == .connected(tls: true))
        let otherKey = work.appendingPathComponent("other-ca.key").path
        let mismatched = await Self.connect(url("certuser", "sslmode=require&sslcert=\(work.appendingPathComponent("client.crt").path)&sslkey=\(otherKey)"))
        #expect(mismatched.refused("invalid_database_url", saying: "sslkey '\(otherKey)' is not the private key of the certificate in sslcert"), "\(mismatched)")
        let notAKey = await Self.connect(url("certuser", "sslmode=require&sslcert=\(work.appendingPathComponent("client.crt").path)&sslkey=\(ca)"))
        #expect(notAKey.refused("invalid_database_url", saying: "sslkey '\(ca)' holds no PEM private key"), "\(notAKey)")

        // Busy polling connects the socket itself (BusyPoll.connect): TLS and its name check as
        // before, by a name that may resolve to more than one address (::1, where nothing listens).
        #expect(await Self.connect(url("postgres", host: "localhost", "sslmode=verify-full&sslrootcert=\(ca)&busy_poll=500")) == .connected(tls: true))

        // A worker over verify-full: migrations, enqueues, LISTEN wake-ups and completions all
        // through TLS (application_name tells its sessions apart in pg_stat_activity), its
        // sessions' sockets connected by busy polling's own connect.
        try await runWorker(over: try DatabaseURL(url("postgres", host: "localhost",
                                                      "sslmode=verify-full&sslrootcert=\(ca)&application_name=loco-tls-worker&busy_poll=500")),
                                admin: admin)
        // And over sslmode=allow, which the server takes without TLS: every session in the clear
        // (the LISTEN connection and locod's kind of connects as well as the pool's).
        try await runWorker(over: try DatabaseURL(url("postgres", "sslmode=allow&application_name=loco-allow-worker")), admin: admin, tls: false)

        // A server certificate made out to localhost only: verify-full by address now fails
        // the name check, verify-ca (no name check) and verify-full by name still connect.
        try await TestCertificates.make("server", subject: "/CN=localhost", names: "DNS:localhost", in: work, signedBy: folder)
        for file in ["server.crt", "server.key"] {
            let target = folder.appendingPathComponent(file).path
            try FileManager.default.removeItem(atPath: target)
            try FileManager.default.copyItem(atPath: work.appendingPathComponent(file).path, toPath: target)
        }
        let (chown, chownOutput) = try await runCommand(URL(fileURLWithPath: "/bin/chown"), ["postgres", folder.appendingPathComponent("server.key").path])
        #expect(chown == 0, "\(chownOutput)")
        _ = try await Self.scalar("SELECT pg_reload_conf()", as: Bool.self, on: admin)
        #expect(await eventually(timeout: .seconds(10)) {
            await Self.connect(url("postgres", "sslmode=verify-full&sslrootcert=\(ca)")) != .connected(tls: true)
        })
        let byAddress = await Self.connect(url("postgres", "sslmode=verify-full&sslrootcert=\(ca)"))
        #expect(byAddress.refused("database_certificate_rejected", saying: "is not made out to '127.0.0.1'", "sslmode=verify-ca skips the name check"), "\(byAddress)")
        #expect(await Self.connect(url("postgres", "sslmode=verify-ca&sslrootcert=\(ca)")) == .connected(tls: true))
        #expect(await Self.connect(url("postgres", host: "localhost", "sslmode=verify-full&sslrootcert=\(ca)")) == .connected(tls: true))

        // A handshake that fails for another reason (no TLS version both sides accept) says
        // so, in BoringSSL's words, without the paths of its sources.
        for setting in ["ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1'", "ALTER SYSTEM SET ssl_max_protocol_version = 'TLSv1.1'"] {
            for try await _ in try await admin.run(PostgresQuery(unsafeSQL: setting), logger: TestDatabase.testLogger) {}
        }
        _ = try await Self.scalar("SELECT pg_reload_conf()", as: Bool.self, on: admin)
        #expect(await eventually(timeout: .seconds(10)) { await Self.connect(url("postgres", "sslmode=require")) != .connected(tls: true) })
        let handshake = await Self.connect(url("postgres", "sslmode=require"))
        #expect(handshake.refused("database_unreachable", saying: "the TLS handshake failed (", "the server's log says why"), "\(handshake)")
        #expect(!"\(handshake)".contains(".build/") && !"\(handshake)".contains(".cc:"), "\(handshake)")
    }

    /// locod takes a password kept out of the URL as libpq does (PGPASSWORD, a password file),
    /// and warns when one is on its command line, where every user can read it.
    func passwordsForLocod(_ url: String, work: URL) async throws {
        let locod = try Repo.binary("locod")
        let status = ["migrate", "status", "--database-url", url]
        let fromEnvironment = try await runCommand(locod, status, environment: ["PGPASSWORD": "hunter2"])
        #expect(fromEnvironment.status == 0, "\(fromEnvironment.output)")
        let file = work.appendingPathComponent("pgpass").path
        try "# host:port:database:user:password\n127.0.0.1:*:postgres:pw:hunter2\n".write(toFile: file, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
        let fromFile = try await runCommand(locod, status, environment: ["PGPASSFILE": file, "PGPASSWORD": ""])
        #expect(fromFile.status == 0, "\(fromFile.output)")
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
        let readable = try await runCommand(locod, status, environment: ["PGPASSFILE": file, "PGPASSWORD": ""])
        #expect(readable.status == 1)
        #expect(readable.output.contains("Warning: password file \(file) has group or world access, so it is not used; make it private: chmod 0600"), "\(readable.output)")
        #expect(readable.output.contains("asks for a password and the URL gives none [database_login_refused]"), "\(readable.output)")
        let onCommandLine = try await runCommand(locod, ["migrate", "status", "--database-url", url.replacingOccurrences(of: "pw@", with: "pw:hunter2@")])
        #expect(onCommandLine.status == 0)
        #expect(onCommandLine.output.contains("Warning: the password in --database-url can be read by every user of this machine"), "\(onCommandLine.output)")
        #expect(!onCommandLine.output.contains("hunter2"))
    }

    func runWorker(over url: DatabaseURL, admin: ConnectionPool, tls: Bool = true) async throws {
        let logger = TestDatabase.testLogger
        let pool = ConnectionPool(url: url, size: 2, logger: logger)
        do {
            try await drain(url: url, pool: pool, admin: admin, tls: tls)
        } catch {
            await pool.close()
            throw error
        }
        await pool.close()
    }

    func drain(url: DatabaseURL, pool: ConnectionPool, admin: ConnectionPool, tls: Bool) async throws {
        let logger = TestDatabase.testLogger
        try await Migrator(database: pool, logger: logger).migrate([(QueueSchema.component, QueueSchema.migrations)])
        let runs = Tally<Int64>()
        var handlers = JobHandlers()
        handlers.register(kind: "tls.count") { _, context in runs.record(context.id) }
        var configuration = fastConfiguration([("tls", 4)], workerID: "tls-worker")
        // Only a notification wakes the worker in time: LISTEN must work over TLS.
        configuration.pollInterval = .seconds(60)
        let worker = try QueueWorker(databaseURL: url, handlers: handlers, configuration: configuration, logger: logger)
        let running = Task { try await worker.run() }
        do {
            try await Task.sleep(for: .seconds(1))
            var ids: [Int64] = []
            for _ in 0..<20 { ids.append(try await JobStore(logger: logger).enqueue(NewJob(queue: "tls", kind: "tls.count"), on: pool).id) }
            ids += try await JobStore(logger: logger).enqueueMany(Array(repeating: NewJob(queue: "tls", kind: "tls.count"), count: 180), on: pool).map(\.id)
            let done = try await eventually(timeout: .seconds(30), every: .milliseconds(100)) { runs.snapshot.count == 200 }
            #expect(done, "\(runs.snapshot.count) of 200 jobs ran")
            #expect(Set(runs.snapshot.keys) == Set(ids) && runs.snapshot.values.allSatisfy { $0 == 1 })
            // Every session the worker and the pool hold uses TLS, or none does.
            let sessions = try await Self.scalar("""
                SELECT count(*) FILTER (WHERE s.ssl)::text || '/' || count(*)::text FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                WHERE a.application_name = '\(url.applicationName ?? "")'
                """, as: String.self, on: admin)
            let parts = sessions.split(separator: "/").compactMap { Int($0) }
            #expect(parts.count == 2 && parts[0] == (tls ? parts[1] : 0) && parts[1] >= 2, "TLS sessions / sessions of the worker: \(sessions)")
        } catch {
            worker.stop()
            _ = try? await running.value
            throw error
        }
        worker.stop()
        try await running.value
    }
}
