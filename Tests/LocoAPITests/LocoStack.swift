import Foundation
import LocoCore
import LocoQueue
import LocoTestSupport
import PostgresNIO
import Testing
import Workers

/// The whole of Loco as processes, for end-to-end tests: a test PostgreSQL, docker-registry with
/// token auth (scripts/services), `locod api` and `locod worker` for every stage, a user `ann`
/// in team `acme` with a personal token, and the examples' busybox base as an OCI archive.
struct LocoStack {
    let db: TestDatabase
    let folder: URL
    let api: ChildProcess
    let workers: ChildProcess
    let base: String
    let token: String
    let workerToken: String
    let baseImage: URL
    let registryURL: String
    let environment: [String: String]

    /// With `throughPgBouncer`, every locod process reaches the database through a real PgBouncer
    /// in transaction mode (4 server connections), by a URL marked `?pgbouncer=true`.
    static func with(db: TestDatabase, workerQueues: [String] = ["build=2", "push=2", "apply=2", "wait=2", "cleanup=2"],
                     throughPgBouncer: Bool = false, _ body: (LocoStack) async throws -> Void) async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/buildah"), FileManager.default.isExecutableFile(atPath: "/usr/bin/podman"),
              FileManager.default.isExecutableFile(atPath: "/usr/sbin/nginx") else {
            throw TestSetupError("buildah, podman or nginx is missing: apt-get install -y buildah podman runc nginx-light (scripts/test installs them)")
        }
        let locod = try Repo.binary("locod")
        let folder = FileManager.default.temporaryDirectory.appending(path: "loco-stack-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let services = Repo.root.appending(path: "scripts/services").path
        let name = "stack-reg-\(UInt32.random(in: 0...UInt32.max))"
        let apiPort = try freePort()
        let started = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [services, "start", "registry", "--name", name,
                                                                                "--token-realm", "http://127.0.0.1:\(apiPort)/v1/registry/token"])
        defer { Task { _ = try? await runCommand(URL(fileURLWithPath: "/bin/bash"), [services, "destroy", "--name", name]) } }
        guard started.status == 0 else { throw TestSetupError("the registry did not start: \(started.output)") }
        var settings: [String: String] = [:]
        for line in started.output.split(separator: "\n") where line.hasPrefix("LOCO_REGISTRY_") {
            let parts = line.split(separator: "=", maxSplits: 1)
            settings[String(parts[0])] = String(parts[1])
        }
        let registryURL = try #require(settings["LOCO_REGISTRY_URL"])
        let registryKey = try #require(settings["LOCO_REGISTRY_KEY"])
        let work = folder.appending(path: "work")
        let bouncer = throughPgBouncer ? try await PgBouncer.start(before: db.url, serverConnections: 4) : nil
        defer { bouncer?.stop() }
        var databaseURL = bouncer?.url ?? db.url
        databaseURL.transactionPooler = throughPgBouncer
        var env = ["LOCO_DATABASE_URL": databaseURL.urlString, "LOCO_CONTEXT_DIR": folder.appending(path: "contexts").path, "LOCO_WORK_DIR": work.path]
        let migrated = try await runCommand(locod, ["migrate"], environment: env)
        guard migrated.status == 0 else { throw TestSetupError("migrate failed: \(migrated.output)") }
        _ = try await runCommand(locod, ["admin", "create-user", "--email", "ann@example.com", "--name", "Ann"], environment: env)
        _ = try await runCommand(locod, ["admin", "create-team", "--name", "acme", "--owner", "ann@example.com"], environment: env)
        // A second user, in no team, for `loco team add`.
        _ = try await runCommand(locod, ["admin", "create-user", "--email", "bob@example.com", "--name", "Bob"], environment: env)
        let user = try await runCommand(locod, ["admin", "create-token", "--user", "ann@example.com", "--output", "json"], environment: env)
        let token = try #require(JSONValue.parse(user.output)?["secret"]?.stringValue, "\(user.output)")
        let worker = try await runCommand(locod, ["admin", "create-token", "--worker", "stack-worker", "--output", "json"], environment: env)
        let workerToken = try #require(JSONValue.parse(worker.output)?["secret"]?.stringValue)
        let tokenFile = folder.appending(path: "worker.token")
        try workerToken.write(to: tokenFile, atomically: true, encoding: .utf8)

        let api = try ChildProcess(locod, ["api", "--port", "\(apiPort)", "--registry-key", registryKey, "--reconcile-seconds", "1"], environment: env)
        env["LOCO_REGISTRY_URL"] = registryURL
        var workerArguments = ["worker", "--registry-token-file", tokenFile.path, "--poll-interval-ms", "200", "--rollout-timeout-seconds", "10"]
        for queue in workerQueues { workerArguments += ["--queue", queue] }
        let workers = try ChildProcess(locod, workerArguments, environment: env)
        let runtime = try PodmanRuntime(stateFolder: work.appending(path: "podman"), configure: false, logger: db.logger)
        defer {
            workers.stop()
            api.stop()
            runtime.entryPoint.stop()
            // Again after the API stopped: a log stream it ran may have used the storage since.
            PodmanRuntime.removeRunroot(stateFolder: runtime.stateFolder)
            try? FileManager.default.removeItem(at: folder)
        }
        let base = "http://127.0.0.1:\(apiPort)"
        let ready = await eventually(timeout: .seconds(20), every: .milliseconds(100)) {
            (try? await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "\(base)/readyz"]))?.output == "ready\n"
        }
        guard ready else { throw TestSetupError("locod api did not get ready: \(api.output.suffix(2000))") }
        let baseImage = folder.appending(path: "base.tar")
        let made = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [Repo.root.appending(path: "scripts/base-image").path, "--archive", baseImage.path],
                                        timeout: .seconds(180))
        guard made.status == 0 else { throw TestSetupError("scripts/base-image failed: \(made.output)") }
        let stack = LocoStack(db: db, folder: folder, api: api, workers: workers, base: base, token: token, workerToken: workerToken,
                              baseImage: baseImage, registryURL: registryURL, environment: env)
        // Workers first (a graceful stop lets a cleanup job finish removing a container), then the
        // API (its supervisor starts serving containers that exit again), then every container of
        // the test.
        func teardown() async throws {
            workers.signal(SIGTERM)
            #expect(await workers.waitForExit(timeout: .seconds(30)) == 0, "workers exit 0 on SIGTERM")
            api.signal(SIGTERM)
            #expect(await api.waitForExit(timeout: .seconds(30)) == 0, "locod api exits 0 on SIGTERM: \(api.output.suffix(2000))")
            try await stack.removeApps(runtime)
        }
        do {
            try await body(stack)
        } catch {
            try? await teardown()
            throw error
        }
        try await teardown()
        #expect(!workers.output.contains(workerToken) && !api.output.contains(workerToken) && !api.output.contains(token), "tokens stay out of the logs")
    }

    /// Every app's containers go with the test.
    func removeApps(_ runtime: PodmanRuntime) async throws {
        let apps = try await db.client.query("SELECT t.name, a.name FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id")
        for try await (team, app) in apps.decode((String, String).self) { try await runtime.removeApp(team: team, app: app) }
        try await runtime.removeEverything()
    }

    /// A copy of an example with a loco.toml whose base image is the test's archive.
    /// A copy of `examples/NAME` whose loco.toml names `app` and builds from the test's base image.
    /// With `keepTables`, the example's own tables (`[run]`, `[resources]`, …; it must have no
    /// `[build]` and no top-level keys but version and name) are kept after that header.
    func example(_ name: String, as app: String, toml extra: String = "", keepTables: Bool = false, edit: [String: String] = [:], fullToml: String? = nil) throws -> URL {
        let target = folder.appending(path: "apps/\(app)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Repo.root.appending(path: "examples/\(name)"), to: target)
        let own = keepTables
            ? try String(contentsOf: target.appending(path: "loco.toml"), encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
                .drop { !$0.hasPrefix("[") }.joined(separator: "\n")
            : ""
        let toml = """
            version = 1
            name = "\(app)"

            [build]
            args = { BASE = "oci-archive:\(baseImage.path)" }
            \(own)
            \(extra)
            """
        try (fullToml ?? toml).write(to: target.appending(path: "loco.toml"), atomically: true, encoding: .utf8)
        for (path, text) in edit {
            try FileManager.default.createDirectory(at: target.appending(path: path).deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: target.appending(path: path), atomically: true, encoding: .utf8)
        }
        return target
    }
}
