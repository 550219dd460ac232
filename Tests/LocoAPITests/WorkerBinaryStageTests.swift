import BuildContext
import Foundation
import LocoCore
import LocoQueue
import LocoTestSupport
import Testing
import Workers

@Suite("locod worker --queue build --queue push, as processes", .serialized)
struct WorkerBinaryStageTests {
    @Test("the real binaries with services from scripts/services: locod api + docker-registry (token auth) + locod worker take examples/hello from upload to serving")
    func binaries() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/buildah") else {
            throw TestSetupError("buildah is not installed: apt-get install -y buildah (scripts/test installs it)")
        }
        try await TestDatabase.with(migrations: []) { db in
            let locod = try Repo.binary("locod")
            let folder = FileManager.default.temporaryDirectory.appending(path: "loco-bin-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let services = Repo.root.appending(path: "scripts/services").path
            let name = "test-reg-\(UInt32.random(in: 0...UInt32.max))"
            defer {
                try? FileManager.default.removeItem(at: folder)
                Task { _ = try? await runCommand(URL(fileURLWithPath: "/bin/bash"), [services, "destroy", "--name", name]) }
            }
            let apiPort = try await TokenAuthRegistry.freePort()
            let started = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [services, "start", "registry", "--name", name,
                                                                                    "--token-realm", "http://127.0.0.1:\(apiPort)/v1/registry/token"])
            #expect(started.status == 0, "\(started.output)")
            var settings: [String: String] = [:]
            for line in started.output.split(separator: "\n") where line.hasPrefix("LOCO_REGISTRY_") {
                let parts = line.split(separator: "=", maxSplits: 1)
                settings[String(parts[0])] = String(parts[1])
            }
            let registryURL = try #require(settings["LOCO_REGISTRY_URL"])
            let registryKey = try #require(settings["LOCO_REGISTRY_KEY"])
            var env = ["LOCO_DATABASE_URL": db.url.urlString, "LOCO_CONTEXT_DIR": folder.appending(path: "contexts").path]
            #expect(try await runCommand(locod, ["migrate"], environment: env).status == 0)
            _ = try await runCommand(locod, ["admin", "create-user", "--email", "ann@example.com"], environment: env)
            _ = try await runCommand(locod, ["admin", "create-team", "--name", "acme", "--owner", "ann@example.com"], environment: env)
            let user = try await runCommand(locod, ["admin", "create-token", "--user", "ann@example.com", "--output", "json"], environment: env)
            let token = try #require(JSONValue.parse(user.output)?["secret"]?.stringValue)
            let worker = try await runCommand(locod, ["admin", "create-token", "--worker", "builder-1", "--output", "json"], environment: env)
            let workerToken = try #require(JSONValue.parse(worker.output)?["secret"]?.stringValue)
            let tokenFile = folder.appending(path: "worker.token")
            try workerToken.write(to: tokenFile, atomically: true, encoding: .utf8)

            let api = try ChildProcess(locod, ["api", "--port", "\(apiPort)", "--registry-key", registryKey], environment: env)
            defer { api.stop() }
            env["LOCO_REGISTRY_URL"] = registryURL
            let workers = try ChildProcess(locod, ["worker", "--queue", "build=1", "--queue", "push=1", "--queue", "apply=1", "--queue", "wait=1",
                                                   "--queue", "cleanup=1", "--work-dir", folder.appending(path: "work").path,
                                                   "--registry-token-file", tokenFile.path, "--poll-interval-ms", "200"], environment: env)
            defer { workers.stop() }

            let curl = URL(fileURLWithPath: "/usr/bin/curl")
            let base = "http://127.0.0.1:\(apiPort)"
            let ready = try await eventually(timeout: .seconds(15), every: .milliseconds(100)) {
                (try? await runCommand(curl, ["-s", "\(base)/readyz"]))?.output == "ready\n"
            }
            #expect(ready, "\(api.output)")
            _ = try await runCommand(curl, ["-s", "-H", "Authorization: Bearer \(token)", "-H", "Content-Type: application/json",
                                            "-d", #"{"name":"web","team":"acme"}"#, "\(base)/v1/apps"])
            let baseImage = folder.appending(path: "base.tar")
            let made = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [Repo.root.appending(path: "scripts/base-image").path, "--archive", baseImage.path],
                                            timeout: .seconds(180))
            #expect(made.status == 0, "\(made.output)")
            try ContextPacker(folder: Repo.root.appending(path: "examples/hello")).pack(to: folder.appending(path: "ctx.tar.gz"))
            let config = #"{"name":"web","build":{"args":{"BASE":"oci-archive:\#(baseImage.path)"}},"run":{"port":8080,"health":"/"}}"#
            let submitted = try await runCommand(curl, ["-s", "-H", "Authorization: Bearer \(token)",
                                                        "-F", "config=\(config);type=application/json",
                                                        "-F", "context=@\(folder.appending(path: "ctx.tar.gz").path);type=application/gzip",
                                                        "\(base)/v1/apps/web/deployments"])
            guard case .number(let id)? = JSONValue.parse(submitted.output)?["id"] else {
                Issue.record("no deployment: \(submitted.output)")
                return
            }
            var digest: String?
            let pushed = try await eventually(timeout: .seconds(90), every: .milliseconds(250)) {
                let shown = try await runCommand(curl, ["-s", "-H", "Authorization: Bearer \(token)", "\(base)/v1/deployments/\(Int(id))"])
                digest = JSONValue.parse(shown.output)?["image_digest"]?.stringValue
                return digest != nil
            }
            #expect(pushed, "no image digest recorded; worker log:\n\(workers.output.suffix(3000))")
            let client = RegistryClient(base: registryURL, credentials: RegistryCredentials(username: "w", password: workerToken), logger: db.logger)
            let stored = try await client.manifestDigest(repository: "acme/web", reference: try #require(digest),
                                                         accept: ["application/vnd.oci.image.manifest.v1+json"])
            #expect(stored == digest)
            // The SSE stream ends with the deployment; its last stage says where the app serves.
            let stream = try await runCommand(curl, ["-s", "-N", "-m", "120", "-H", "Authorization: Bearer \(token)", "\(base)/v1/deployments/\(Int(id))/events"],
                                              timeout: .seconds(130))
            #expect(stream.output.contains("event: succeeded") && stream.output.contains(#""state":"succeeded""#), "\(stream.output.suffix(2000))\n\(workers.output.suffix(2000))")
            let serving = stream.output.firstMatch(of: #/serving at (http://127\.0\.0\.1:\d+)/#).map { String($0.1) }
            let page = try await runCommand(curl, ["-s", "-m", "5", try #require(serving)])
            #expect(page.output.contains("Hello from Loco"))
            #expect(!workers.output.contains(workerToken) && !api.output.contains(workerToken), "the worker token stays out of the logs")
            // The app's containers go with the test.
            _ = try await runCommand(curl, ["-s", "-X", "DELETE", "-H", "Authorization: Bearer \(token)", "\(base)/v1/apps/web"])
            let runtime = try PodmanRuntime(stateFolder: folder.appending(path: "work/podman"), configure: false, logger: db.logger)
            _ = try await runtime.removeApp(team: "acme", app: "web")
            runtime.entryPoint.stop()
            workers.signal(SIGTERM)
            #expect(await workers.waitForExit(timeout: .seconds(30)) == 0)
        }
    }
}
