import Foundation
import LocoCore
import LocoQueue
import LocoTestSupport
import PostgresNIO
import Testing

@Suite("locod api and admin processes", .serialized)
struct APIProcessTests {
    @Test("bootstrap with locod admin, serve with locod api (a second one on its port ends with port_in_use, one on an address not this machine's with address_unavailable), stop with SIGTERM; secrets stay out of the log")
    func bootstrapAndServe() async throws {
        try await TestDatabase.with(migrations: []) { db in
            let locod = try Repo.binary("locod")
            let env = ["LOCO_DATABASE_URL": db.url.urlString]
            let migrated = try await runCommand(locod, ["migrate"], environment: env)
            #expect(migrated.status == 0 && migrated.output.contains("core/1_domain"), "\(migrated.output)")
            let user = try await runCommand(locod, ["admin", "create-user", "--email", "Ann@Example.com", "--name", "Ann"], environment: env)
            #expect(user.status == 0, "\(user.output)")
            let again = try await runCommand(locod, ["admin", "create-user", "--email", "ann@example.com"], environment: env)
            #expect(again.status == 1 && again.output.contains("[already_exists]") && again.output.contains("Hint:"), "\(again.output)")
            let team = try await runCommand(locod, ["admin", "create-team", "--name", "acme", "--owner", "ann@example.com"], environment: env)
            #expect(team.status == 0, "\(team.output)")
            let badTeam = try await runCommand(locod, ["admin", "create-team", "--name", "Acme Inc", "--owner", "ann@example.com"], environment: env)
            #expect(badTeam.status == 1 && badTeam.output.contains("[invalid_name]"))
            let noUser = try await runCommand(locod, ["admin", "create-token", "--user", "bob@example.com"], environment: env)
            #expect(noUser.status == 2 && noUser.output.contains("locod admin create-user"))
            // Days times 86,400 once overflowed (a crash) for a large enough number.
            let longLived = try await runCommand(locod, ["admin", "create-token", "--user", "ann@example.com", "--expires-in-days", "999999999999999"], environment: env)
            #expect(longLived.status == 2 && longLived.output.contains("--expires-in-days must be from 1 to 366"), "\(longLived.output)")
            let created = try await runCommand(locod, ["admin", "create-token", "--user", "ann@example.com", "--output", "json"], environment: env)
            #expect(created.status == 0)
            let secret = try #require(JSONValue.parse(created.output)?["secret"]?.stringValue)
            #expect(secret.hasPrefix("loco_pat_"))
            let worker = try await runCommand(locod, ["admin", "create-token", "--worker", "builder-1", "--output", "json"], environment: env)
            #expect(JSONValue.parse(worker.output)?["secret"]?.stringValue?.hasPrefix("loco_wkr_") == true)

            let port = try freePort()
            let contexts = FileManager.default.temporaryDirectory.appending(path: "loco-api-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: contexts) }
            let api = try ChildProcess(locod, ["api", "--port", "\(port)", "--context-dir", contexts.path, "--log-level", "debug"], environment: env)
            defer { api.stop() }
            let curl = URL(fileURLWithPath: "/usr/bin/curl")
            let ready = try await eventually(timeout: .seconds(15), every: .milliseconds(100)) {
                (try? await runCommand(curl, ["-s", "http://127.0.0.1:\(port)/readyz"]))?.output == "ready\n"
            }
            #expect(ready, "locod api did not become ready: \(api.output)")
            #expect(api.output.contains("API listening"), "\(api.output)")
            // A second API on the taken port ends at once and says why (NIO says only "bind(…):
            // Address already in use"); it no longer says it listens before binding.
            let second = try await runCommand(locod, ["api", "--port", "\(port)", "--context-dir", contexts.path], environment: env, timeout: .seconds(30))
            #expect(second.status == 1 && second.output.contains("cannot serve the API on 127.0.0.1:\(port): something else listens there [port_in_use]"), "\(second.output)")
            #expect(!second.output.contains("API listening"), "\(second.output)")
            // An address that is not this machine's (203.0.113.0/24 is for documentation) gets a
            // hint about --host, not about the port; a port written into --host is a usage error.
            let foreign = try await runCommand(locod, ["api", "--host", "203.0.113.5", "--port", "\(try freePort())", "--context-dir", contexts.path], environment: env, timeout: .seconds(30))
            #expect(foreign.status == 1 && foreign.output.contains("203.0.113.5 is not an address of this machine [address_unavailable]"), "\(foreign.output)")
            #expect(foreign.output.contains("Hint: Pass an address of this machine as --host: 127.0.0.1 (this machine only) or 0.0.0.0"), "\(foreign.output)")
            let hostWithPort = try await runCommand(locod, ["api", "--host", "127.0.0.1:\(port)", "--context-dir", contexts.path], environment: env, timeout: .seconds(30))
            #expect(hostWithPort.status == 2 && hostWithPort.output.contains("--host '127.0.0.1:\(port)' has a port in it"), "\(hostWithPort.output)")
            let whoami = try await runCommand(curl, ["-s", "-H", "Authorization: Bearer \(secret)", "http://127.0.0.1:\(port)/v1/whoami"])
            #expect(JSONValue.parse(whoami.output)?["user"]?["email"]?.stringValue == "ann@example.com", "\(whoami.output)")
            let denied = try await runCommand(curl, ["-s", "-H", "Authorization: Bearer \(secret)x", "http://127.0.0.1:\(port)/v1/whoami"])
            #expect(JSONValue.parse(denied.output)?["error"]?["code"]?.stringValue == "token_invalid")
            let metrics = try await runCommand(curl, ["-s", "http://127.0.0.1:\(port)/metrics"])
            #expect(metrics.output.contains(#"loco_api_requests_total{method="GET",route="/v1/whoami",status="200"}"#), "\(metrics.output.prefix(500))")

            api.signal(SIGTERM)
            let status = await api.waitForExit(timeout: .seconds(15))
            #expect(status == 0, "locod api exits 0 on SIGTERM: \(api.output)")
            #expect(!api.output.contains(secret.dropFirst(9)), "a token secret reached the log")
        }
    }

    @Test("locod api serves HTTPS with --tls-cert and --tls-key; loco trusts its private CA by --ca-cert, LOCO_CA_CERT or a saved login, and says when it does not; bad TLS settings are usage errors")
    func https() async throws {
        try await TestDatabase.with(migrations: []) { db in
            let locod = try Repo.binary("locod"), loco = try Repo.binary("loco")
            let env = ["LOCO_DATABASE_URL": db.url.urlString]
            #expect(try await runCommand(locod, ["migrate"], environment: env).status == 0)
            _ = try await runCommand(locod, ["admin", "create-user", "--email", "ann@example.com"], environment: env)
            let created = try await runCommand(locod, ["admin", "create-token", "--user", "ann@example.com", "--output", "json"], environment: env)
            let secret = try #require(JSONValue.parse(created.output)?["secret"]?.stringValue)
            let folder = FileManager.default.temporaryDirectory.appending(path: "loco-api-tls-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: folder) }
            try await TestCertificates.make("ca", subject: "/CN=Loco API test CA", in: folder, signedBy: nil)
            try await TestCertificates.make("server", subject: "/CN=localhost", names: "DNS:localhost,IP:127.0.0.1", in: folder, signedBy: folder)
            let ca = folder.appending(path: "ca.crt").path, cert = folder.appending(path: "server.crt").path, key = folder.appending(path: "server.key").path

            // Bad settings are said before anything starts (exit 2).
            let noKey = try await runCommand(locod, ["api", "--port", "\(try freePort())", "--tls-cert", cert], environment: env)
            #expect(noKey.status == 2 && noKey.output.contains("--tls-cert is given without --tls-key [usage]"), "\(noKey.output)")
            let wrongKey = try await runCommand(locod, ["api", "--port", "\(try freePort())", "--tls-cert", cert, "--tls-key", folder.appending(path: "ca.key").path], environment: env)
            #expect(wrongKey.status == 2 && wrongKey.output.contains("is not the private key of the certificate in --tls-cert"), "\(wrongKey.output)")
            let notPEM = try await runCommand(locod, ["api", "--port", "\(try freePort())", "--tls-cert", key, "--tls-key", key], environment: env)
            #expect(notPEM.status == 2 && notPEM.output.contains("--tls-cert \(key)"), "\(notPEM.output)")
            let keyNotPEM = try await runCommand(locod, ["api", "--port", "\(try freePort())", "--tls-cert", cert, "--tls-key", cert], environment: env)
            #expect(keyNotPEM.status == 2 && keyNotPEM.output.contains("cannot read a PEM private key from --tls-key \(cert)"), "\(keyNotPEM.output)")

            let port = try freePort()
            let contexts = folder.appending(path: "contexts")
            let api = try ChildProcess(locod, ["api", "--port", "\(port)", "--context-dir", contexts.path, "--runtime", "none"],
                                       environment: env.merging(["LOCO_TLS_CERT": cert, "LOCO_TLS_KEY": key]) { $1 })
            defer { api.stop() }
            let curl = URL(fileURLWithPath: "/usr/bin/curl")
            let ready = try await eventually(timeout: .seconds(15), every: .milliseconds(100)) {
                (try? await runCommand(curl, ["-s", "--cacert", ca, "https://127.0.0.1:\(port)/readyz"]))?.output == "ready\n"
            }
            #expect(ready, "locod api did not serve HTTPS: \(api.output)")
            #expect(api.output.contains("address=https://127.0.0.1:\(port)"), "\(api.output)")
            // Plain HTTP on the HTTPS port gets no answer.
            #expect(try await runCommand(curl, ["-s", "-m", "5", "http://127.0.0.1:\(port)/readyz"]).output.isEmpty)

            let config = folder.appending(path: "config").path
            let cli = ["XDG_CONFIG_HOME": config, "LOCO_CA_CERT": "", "LOCO_API": "", "LOCO_TOKEN": ""]
            let untrusted = try await runCommand(loco, ["whoami", "--api", "https://127.0.0.1:\(port)", "--token", secret], environment: cli)
            #expect(untrusted.status == 4, "\(untrusted.output)")
            #expect(untrusted.output.contains("shows a TLS certificate no CA this machine trusts has signed") && untrusted.output.contains("--ca-cert FILE or LOCO_CA_CERT"), "\(untrusted.output)")
            let byOption = try await runCommand(loco, ["whoami", "--api", "https://127.0.0.1:\(port)", "--token", secret, "--ca-cert", ca], environment: cli)
            #expect(byOption.status == 0 && byOption.output.contains("ann@example.com"), "\(byOption.output)")
            let byEnvironment = try await runCommand(loco, ["whoami", "--api", "https://localhost:\(port)", "--token", secret], environment: cli.merging(["LOCO_CA_CERT": ca]) { $1 })
            #expect(byEnvironment.status == 0 && byEnvironment.output.contains("ann@example.com"), "\(byEnvironment.output)")
            let badCA = try await runCommand(loco, ["whoami", "--api", "https://127.0.0.1:\(port)", "--token", secret, "--ca-cert", key], environment: cli)
            #expect(badCA.status == 2 && badCA.output.contains("holds no PEM certificate"), "\(badCA.output)")
            let missingCA = try await runCommand(loco, ["whoami", "--api", "https://127.0.0.1:\(port)", "--token", secret, "--ca-cert", folder.appending(path: "none.crt").path], environment: cli)
            #expect(missingCA.status == 2 && missingCA.output.contains("cannot read the CA certificate"), "\(missingCA.output)")
            // A login saves the CA with the address, so later commands need neither.
            // Given relative to the folder it runs in, the CA is saved by its absolute path.
            let relative = try await runCommand(URL(fileURLWithPath: "/bin/sh"), ["-c", "cd \(folder.path) && exec \(loco.path) login --api https://127.0.0.1:\(port) --token \(secret) --ca-cert ca.crt"], environment: cli)
            #expect(relative.status == 0, "\(relative.output)")
            let credentials = try String(contentsOfFile: config + "/loco/credentials.json", encoding: .utf8)
            #expect(credentials.contains(ca.replacingOccurrences(of: "/", with: "\\/")) || credentials.contains(ca), "the CA is not saved by its absolute path")
            let saved = try await runCommand(loco, ["whoami"], environment: cli)
            #expect(saved.status == 0 && saved.output.contains("ann@example.com"), "\(saved.output)")
            #expect(!api.output.contains(secret.dropFirst(9)), "a token secret reached the log")
        }
    }

    @Test("PostgreSQL stopped under a running locod api: /readyz and the routes answer 503, then recover")
    func databaseOutage() async throws {
        let postgres = try await PrivatePostgres.start()
        defer { Task { await postgres.destroy() } }
        let locod = try Repo.binary("locod")
        let env = ["LOCO_DATABASE_URL": postgres.url.urlString]
        #expect(try await runCommand(locod, ["migrate"], environment: env).status == 0)
        _ = try await runCommand(locod, ["admin", "create-user", "--email", "ann@example.com"], environment: env)
        let created = try await runCommand(locod, ["admin", "create-token", "--user", "ann@example.com", "--output", "json"], environment: env)
        let secret = try #require(JSONValue.parse(created.output)?["secret"]?.stringValue)
        let port = try freePort()
        let contexts = FileManager.default.temporaryDirectory.appending(path: "loco-api-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: contexts) }
        let api = try ChildProcess(locod, ["api", "--port", "\(port)", "--context-dir", contexts.path], environment: env)
        defer { api.stop() }
        let curl = URL(fileURLWithPath: "/usr/bin/curl")
        func get(_ path: String) async throws -> (code: String, body: String) {
            let result = try await runCommand(curl, ["-s", "-m", "20", "-w", "\n%{http_code}", "-H", "Authorization: Bearer \(secret)", "http://127.0.0.1:\(port)\(path)"])
            let lines = result.output.split(separator: "\n", omittingEmptySubsequences: false)
            return (String(lines.last ?? ""), lines.dropLast().joined(separator: "\n"))
        }
        let up = try await eventually(timeout: .seconds(15), every: .milliseconds(100)) { try await get("/readyz").code == "200" }
        #expect(up, "\(api.output)")
        try await postgres.stop()
        let down = try await get("/readyz")
        #expect(down.code == "503" && down.body.contains("database_unavailable"), "\(down)")
        let teams = try await get("/v1/teams")
        #expect(teams.code == "503" && teams.body.contains("database_unavailable") && teams.body.contains("hint"), "\(teams)")
        #expect(api.exitStatusIfExited() == nil, "the API keeps running")
        try await postgres.start()
        let back = try await eventually(timeout: .seconds(30), every: .milliseconds(200)) { try await get("/v1/teams").code == "200" }
        #expect(back, "the API reconnects once PostgreSQL is back: \(api.output.suffix(2000))")

        // A server that answers but refuses the login (pg_hba.conf rejects the API's database,
        // as after a password rotation): 503 database_unavailable too, and back once it admits it.
        let admin = ConnectionPool(url: postgres.url.with(database: "template1"), size: 1, logger: TestDatabase.testLogger)
        func run(_ sql: String) async throws {
            for try await _ in try await admin.run(PostgresQuery(unsafeSQL: sql), logger: TestDatabase.testLogger) {}
        }
        var hbaFile = ""
        for try await path in try await admin.run("SHOW hba_file", logger: TestDatabase.testLogger).decode(String.self) { hbaFile = path }
        let rules = try String(contentsOfFile: hbaFile, encoding: .utf8)
        try ("host postgres all 127.0.0.1/32 reject\n" + rules).write(toFile: hbaFile, atomically: false, encoding: .utf8)
        try await run("SELECT pg_reload_conf()")
        try await Task.sleep(for: .milliseconds(500))
        try await run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'postgres'")
        let refused = try await eventually(timeout: .seconds(15), every: .milliseconds(200)) { try await get("/v1/teams").code == "503" }
        let refusedAnswer = try await get("/v1/teams")
        #expect(refused && refusedAnswer.body.contains("database_unavailable"), "\(refusedAnswer)")
        #expect(api.exitStatusIfExited() == nil, "the API keeps running")
        try rules.write(toFile: hbaFile, atomically: false, encoding: .utf8)
        try await run("SELECT pg_reload_conf()")
        await admin.close()
        let admitted = try await eventually(timeout: .seconds(30), every: .milliseconds(200)) { try await get("/v1/teams").code == "200" }
        #expect(admitted, "the API logs in again once the server admits it: \(api.output.suffix(2000))")
    }

    @Test("locod api refuses bad settings and an unreachable database with coded errors")
    func badSettings() async throws {
        let locod = try Repo.binary("locod")
        let unreachable = try await runCommand(locod, ["api", "--database-url", "postgres://loco:hunter2@127.0.0.1:1/loco"])
        #expect(unreachable.status == 1 && unreachable.output.contains("127.0.0.1:1") && !unreachable.output.contains("hunter2"))
        try await TestDatabase.with(migrations: []) { db in
            let env = ["LOCO_DATABASE_URL": db.url.urlString]
            let noKey = try await runCommand(locod, ["api", "--registry-key", "/nonexistent/key.pem"], environment: env)
            #expect(noKey.status == 2 && noKey.output.contains("registry token key"), "\(noKey.output)")
            let badPort = try await runCommand(locod, ["api", "--port", "70000"], environment: env)
            #expect(badPort.status == 2 && badPort.output.contains("--port"), "\(badPort.output)")
            // A huge size once overflowed (a crash); no connections or a 0 s reconcile loop cannot work.
            for (option, value) in [("--max-context-mib", "99999999999999"), ("--pool-size", "0"), ("--reconcile-seconds", "0")] {
                let bad = try await runCommand(locod, ["api", option, value], environment: env)
                #expect(bad.status == 2 && bad.output.contains("\(option) must be from") && bad.output.contains("Hint: Pass e.g. \(option) "), "\(bad.output)")
            }
        }
    }
}
