import BuildContext
import Foundation
import HTTPTypes
import LocoAPI
import LocoCore
import LocoQueue
import LocoTestSupport
import Logging
import NIOCore
import PostgresNIO
import Testing
@testable import Workers

@Suite("Local runtime (podman) end to end", .serialized)
struct RuntimeStageTests {
    static func deployBody(from example: URL, config: String, edit: [String: String] = [:], in folder: URL) async throws -> (HTTPFields, ByteBuffer) {
        let source = folder.appending(path: "src-\(UUID().uuidString)")
        let copied = try await runCommand(URL(fileURLWithPath: "/bin/cp"), ["-r", example.path, source.path])
        guard copied.status == 0 else { throw TestSetupError("cp failed: \(copied.output)") }
        for (path, text) in edit {
            let url = source.appending(path: path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: url, atomically: true, encoding: .utf8)
        }
        let archive = folder.appending(path: "ctx-\(UUID().uuidString).tar.gz")
        try ContextPacker(folder: source).pack(to: archive)
        return Harness.deployBody(config: config, context: try Data(contentsOf: archive))
    }

    @Test("hello deploys and serves; a redeploy switches and removes the old container; crash, never-ready and out-of-memory versions fail with their reports while the last good one keeps serving")
    func pipeline() async throws {
        for tool in ["/usr/bin/podman", "/usr/bin/buildah"] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw TestSetupError("\(tool) is not installed: apt-get install -y podman runc slirp4netns buildah (scripts/test installs them)")
        }
        try await RegistryPushTests.withRegistry { registry, harness, worker, folder in
            let base = folder.appending(path: "base.tar")
            let made = try await runCommand(URL(fileURLWithPath: "/bin/bash"), [Repo.root.appending(path: "scripts/base-image").path, "--archive", base.path],
                                            timeout: .seconds(180))
            #expect(made.status == 0, "\(made.output)")
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            _ = try await harness.app("web", in: team, owner: ann)
            let token = try await harness.token(for: ann)
            let db = harness.database
            let credentials = RegistryCredentials(username: "w", password: worker)
            let settings = StageSettings(contexts: harness.api.contexts, workFolder: folder.appending(path: "work"),
                                         builder: BuilderConfiguration(stateFolder: folder.appending(path: "work/buildah"), timeout: .seconds(120)),
                                         registryURL: "http://127.0.0.1:\(registry.port)", registryCredentials: credentials)
            let runtime = try PodmanRuntime(stateFolder: folder.appending(path: "podman"), insecureRegistries: ["127.0.0.1:\(registry.port)"], logger: db.logger)
            var handlers = JobHandlers()
            try DeployStages(database: db.client, settings: settings, logger: db.logger).register(in: &handlers, stages: [.build, .push])
            RuntimeStages(database: db.client, runtime: runtime, pullCredentials: credentials, rolloutTimeout: .seconds(8), logger: db.logger)
                .register(in: &handlers, stages: [.apply, .wait])
            CleanupStage(database: db.client, runtime: runtime, registry: RegistryClient(base: settings.registryURL, credentials: credentials, logger: db.logger),
                         settings: settings, logger: db.logger).register(in: &handlers)
            // Whatever happens, no container of this test outlives it.
            do {
                try await Self.scenarios(harness: harness, db: db, handlers: handlers, runtime: runtime, token: token, folder: folder, base: base,
                                         registry: RegistryClient(base: settings.registryURL, credentials: credentials, logger: db.logger))
            } catch {
                try? await runtime.removeApp(team: "acme", app: "web")
                runtime.entryPoint.stop()
                throw error
            }
            try await runtime.removeApp(team: "acme", app: "web")
            runtime.entryPoint.stop()
            #expect(try await runtime.logs(team: "acme", app: "web", tail: 1).isEmpty)
            try await runtime.removeEverything()
        }
    }

    static func scenarios(harness: Harness, db: TestDatabase, handlers: JobHandlers, runtime: PodmanRuntime, token: String, folder: URL, base: URL,
                          registry: RegistryClient) async throws {
            let hello = Repo.root.appending(path: "examples/hello")
            func config(health: String = "/", extra: String = "") -> String {
                #"{"name":"web","build":{"args":{"BASE":"oci-archive:\#(base.path)"}},"run":{"port":8080,"health":"\#(health)"}\#(extra)}"#
            }
            func deploy(_ body: (HTTPFields, ByteBuffer)) async throws -> Deployment {
                try await ended(try await harness.call(.post, "/v1/apps/web/deployments", token: token, headers: body.0, body: body.1))
            }
            /// A rollback: that deployment's images again, through the API.
            func redeploy(_ source: Deployment) async throws -> Deployment {
                try await ended(try await harness.call(.post, "/v1/deployments/\(source.id)/redeploy", token: token))
            }
            func ended(_ reply: Reply) async throws -> Deployment {
                guard case .number(let id)? = reply.json?["id"] else { throw TestSetupError("no id: \(reply.text)") }
                let done = try await eventually(timeout: .seconds(120), every: .milliseconds(200)) {
                    try await harness.store.deployment(id: Int64(id), on: db.client)?.state.isFinal == true
                }
                #expect(done, "deployment \(Int(id)) did not end")
                return try #require(try await harness.store.deployment(id: Int64(id), on: db.client))
            }
            func servingURL(_ deployment: Deployment) async throws -> String {
                let events = try await harness.store.events(deploymentID: deployment.id, after: 0, on: db.client)
                let line = try #require(events.last { $0.type == "stage_finished" && $0.stage == "wait" }?.message)
                return String(try #require(line.split(separator: " ").last))
            }
            func get(_ url: String) async throws -> String {
                try await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "-m", "5", url]).output
            }

            try await db.withWorker(fastConfiguration([("build", 1), ("push", 1), ("apply", 1), ("wait", 2), ("cleanup", 1)]), handlers: handlers) { _ in
                let first = try await deploy(try await Self.deployBody(from: hello, config: config(), in: folder))
                #expect(first.state == .succeeded, "\(String(describing: first.report))")
                let firstURL = try await servingURL(first)
                #expect(try await get(firstURL).contains("Hello from Loco"))

                #expect(first.url == firstURL, "the deployment records its address")
                let firstContainer = try #require(try await runtime.endpoints(deploymentID: first.id, team: "acme", app: "web")["web"])

                let second = try await deploy(try await Self.deployBody(from: hello, config: config(), edit: ["public/index.html": "<h1>Version two</h1>\n"], in: folder))
                #expect(second.state == .succeeded, "\(String(describing: second.report))")
                let secondURL = try await servingURL(second)
                #expect(secondURL == firstURL, "the app keeps its address across deploys")
                let served = try await get(secondURL)
                #expect(served.contains("Version two"), "\(served.prefix(300))")
                // The cleanup after a success stops the previous version.
                #expect(try await eventually(timeout: .seconds(30)) { try await db.state(ofDeploymentJob: second.id, stage: "cleanup") == "completed" })
                #expect(try await get(firstContainer).isEmpty, "the old version's container is gone")
                #expect(try await runtime.endpoints(deploymentID: first.id, team: "acme", app: "web").isEmpty)
                // The first version's cleanup once more, late (a retried or held-up job): the newer,
                // serving version stays (it once stopped it, and the app answered 502).
                #expect(try await runtime.retire(keeping: first.id, team: "acme", app: "web") == 0)
                #expect(try await get(secondURL).contains("Version two"), "a late cleanup of an older version leaves the serving one")

                try await Self.supervision(runtime: runtime, serving: second, url: secondURL, logger: db.logger)

                let crash = try await deploy(try await Self.deployBody(from: hello, config: config(), edit: [
                    "Dockerfile": "ARG BASE\nFROM ${BASE}\nCMD [\"sh\", \"-c\", \"echo starting; echo 'fatal: DATABASE_URL is not set' >&2; exit 1\"]\n"], in: folder))
                #expect(crash.state == .failed && crash.report?.code == "CRASH_LOOP", "\(String(describing: crash.report))")
                #expect(crash.report?.evidence["exit_code"] == .number(1))
                #expect(crash.report?.evidence["log_tail"].map { "\($0)" }?.contains("DATABASE_URL is not set") == true, "\(String(describing: crash.report))")
                #expect(try await get(secondURL).contains("Version two"), "the previous version keeps serving")

                let neverReady = try await deploy(try await Self.deployBody(from: hello, config: config(health: "/healthz"), in: folder))
                #expect(neverReady.state == .failed && neverReady.report?.code == "READINESS_PROBE_FAILED", "\(String(describing: neverReady.report))")

                // conmon marks an out-of-memory kill with a file named `oom` in its working directory.
                let strayMarker = FileManager.default.currentDirectoryPath + "/oom"
                let markerWasThere = FileManager.default.fileExists(atPath: strayMarker)
                let hungry = try await deploy(try await Self.deployBody(from: hello, config: config(extra: #","resources":{"memory":"32Mi"}"#), edit: [
                    "Dockerfile": "ARG BASE\nFROM ${BASE}\nCMD [\"dd\", \"if=/dev/zero\", \"of=/dev/null\", \"bs=300M\", \"count=1\"]\n"], in: folder))
                #expect(hungry.state == .failed && hungry.report?.code == "OOM_KILLED", "\(String(describing: hungry.report))")
                #expect(markerWasThere || !FileManager.default.fileExists(atPath: strayMarker),
                        "podman runs in the runtime's state folder, so conmon's oom marker stays out of the worker's working directory")
                #expect(try await get(secondURL).contains("Version two"), "the previous version still serves")

                // A third good version: the registry keeps the images of the last two versions that
                // served (the serving one among them); older ones and those of failed deployments go.
                let third = try await deploy(try await Self.deployBody(from: hello, config: config(), edit: ["public/index.html": "<h1>Version three</h1>\n"], in: folder))
                #expect(third.state == .succeeded)
                let cleaned = try await eventually(timeout: .seconds(30)) { try await db.state(ofDeploymentJob: third.id, stage: "cleanup") == "completed" }
                #expect(cleaned)
                let types = ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]
                #expect(try await registry.manifestDigest(repository: "acme/web", reference: try #require(third.imageDigest), accept: types) == third.imageDigest)
                #expect(try await registry.manifestDigest(repository: "acme/web", reference: try #require(second.imageDigest), accept: types) == second.imageDigest)
                #expect(try await registry.manifestDigest(repository: "acme/web", reference: try #require(hungry.imageDigest), accept: types) == nil,
                        "a failed deployment's image is deleted by digest")
                #expect(try await registry.manifestDigest(repository: "acme/web", reference: try #require(first.imageDigest), accept: types) == nil,
                        "an older version's image is deleted by digest")
                #expect(try await get(try await servingURL(third)).contains("Version three"))
                let cleanupEvent = try await harness.store.events(deploymentID: third.id, after: 0, on: db.client).last { $0.stage == "cleanup" }
                #expect(cleanupEvent?.message.contains("deleted") == true, "\(String(describing: cleanupEvent))")

                // A rollback to the version before serves it again from its kept image.
                let rolledBackTo = try await redeploy(second)
                #expect(rolledBackTo.state == .succeeded, "\(String(describing: rolledBackTo.report))")
                #expect(try await get(try await servingURL(rolledBackTo)).contains("Version two"))
                // Its cleanup is still stopping the third version's container (a 5 s grace period) when the
                // app is deleted below: that cancels the cleanup job, and the removal must finish anyway.

                // Cleanup recorded what it deleted: the next cleanup does not ask the registry again, and
                // a rollback to such a version is refused before it starts.
                let pruned = try await harness.store.prunedImages(appID: first.appID, among: [first, hungry, second, third].flatMap(\.imageDigests), on: db.client)
                #expect(pruned == Set([first, hungry].flatMap(\.imageDigests)), "\(pruned)")
                #expect(try await harness.store.imagesToPrune(appID: first.appID, keep: 2, on: db.client).isEmpty)
                let refused = try await harness.call(.post, "/v1/deployments/\(first.id)/redeploy", token: token)
                #expect(refused.status == 409 && refused.errorCode == "not_redeployable"
                        && refused.text.contains("cleanup has deleted its image for web from the registry") && refused.text.contains("--keep-images"), "\(refused.text)")
                // An image deleted some other way (by hand; no record): the rollback starts, and its report
                // says the image is gone, and only what is known.
                _ = try await db.client.query("DELETE FROM loco_pruned_images WHERE app_id = \(first.appID)").collect()
                let gone = try await redeploy(first)
                #expect(gone.state == .failed && gone.report?.code == "IMAGE_PULL_FAILED" && gone.report?.message.contains("the registry no longer has the image") == true
                        && gone.report?.hint.contains("--keep-images") == true && gone.report?.evidence["exit_code"] == nil, "\(String(describing: gone.report))")
                #expect(try await get(try await servingURL(rolledBackTo)).contains("Version two"), "the serving version is untouched")

                // Deleting the app takes its containers and images with it.
                let thirdURL = try await servingURL(third)
                let deleted = try await harness.call(.delete, "/v1/apps/web", token: token)
                #expect(deleted.status == 204)
                let removed = try await eventually(timeout: .seconds(30)) {
                    try await db.scalar("SELECT count(*) FROM loco_jobs WHERE kind = 'app.remove' AND state = 'completed'", as: Int64.self) == 1
                }
                #expect(removed)
                #expect(try await eventually(timeout: .seconds(10)) { try await get(thirdURL).isEmpty }, "nothing serves the deleted app")
                #expect(!FileManager.default.fileExists(atPath: runtime.platformLog.file(team: "acme", app: "web").path), "its platform log went with it")
                #expect(try await runtime.endpoints(deploymentID: third.id, team: "acme", app: "web").isEmpty)
                #expect(try await registry.manifestDigest(repository: "acme/web", reference: try #require(third.imageDigest), accept: types) == nil)
                // Nor is a container monitor left: the retire that the deletion cancelled ran to its end.
                let noMonitor = try await eventually(timeout: .seconds(15), every: .milliseconds(300)) {
                    try await runCommand(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "conmon .*\(folder.path)"]).output.isEmpty
                }
                #expect(noMonitor, "a conmon of this test's containers is still running")
            }
        }
    
    /// The supervisor starts a serving container that exited again at once, then after its
    /// back-off (2 s here, 10 s by default); a container of a version that does not serve stays down.
    static func supervision(runtime: PodmanRuntime, serving: Deployment, url: String, logger: Logger) async throws {
        let supervisor = ContainerSupervisor(runtime: runtime, backoff: RestartBackoff(base: 2, cap: 4), logger: logger)
        let name = "loco-acme-web-d\(serving.id)-web"
        func kill(_ container: String) async throws {
            #expect(try await runtime.run(["kill", container]).0 == 0)
            let ended = try await eventually(timeout: .seconds(10), every: .milliseconds(100)) {
                try await runtime.listed().first { $0.name == container }?.hasEnded == true
            }
            #expect(ended, "\(container) exited")
        }
        func instance(_ container: String) async throws -> AppInstance? {
            try await runtime.instances(team: "acme", app: "web").first { $0.name == container }
        }
        #expect(try await supervisor.pass().isEmpty, "nothing to do while it runs")
        // `loco logs --follow` from here on: it keeps following across the restarts below.
        let followed = FollowedLines()
        let follower = Task {
            for try await line in runtime.logStream(team: "acme", app: "web", options: LogOptions(follow: true, tail: 0)) { await followed.add(line) }
            await followed.end()
        }

        try await kill(name)
        let first = try await supervisor.pass()
        #expect(first == [ContainerSupervisor.Restart(name: name, exitCode: 137, restarts: 1, app: "acme/web", service: "web")], "the first exit restarts at once: \(first)")
        let answers = try await eventually(timeout: .seconds(10), every: .milliseconds(200)) {
            try await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "-m", "5", url]).output.contains("Version two")
        }
        #expect(answers, "the app answers again at its address")
        let running = try await instance(name)
        #expect(running?.state == "running" && running?.restarts == 1 && running?.lastExitCode == 137 && running?.nextStartAt == nil, "\(String(describing: running))")

        // The second exit in a row waits out the back-off.
        try await kill(name)
        let killedAt = Date()
        #expect(try await supervisor.pass().isEmpty, "the second exit waits")
        let waiting = try await instance(name)
        #expect(waiting?.state == "exited" && waiting?.restarts == 1 && waiting?.lastExitCode == 137, "\(String(describing: waiting))")
        let next = try #require(waiting?.nextStartAt, "\(String(describing: waiting))")
        #expect(next > killedAt.addingTimeInterval(-1.5) && next < killedAt.addingTimeInterval(2.5), "about 2 s after the exit: \(next) vs \(killedAt)")
        var second: [ContainerSupervisor.Restart] = []
        let restarted = try await eventually(timeout: .seconds(15), every: .milliseconds(250)) {
            second = try await supervisor.pass()
            return !second.isEmpty
        }
        #expect(restarted && second == [ContainerSupervisor.Restart(name: name, exitCode: 137, restarts: 2, app: "acme/web", service: "web")], "\(second)")
        let again = try await instance(name)
        #expect(again?.state == "running" && again?.restarts == 2 && again?.nextStartAt == nil, "\(String(describing: again))")

        // The follow saw both restarts, and what the app printed after the second.
        _ = try await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "-m", "5", url + "/after-the-second-restart"])
        let followedAll = try await eventually(timeout: .seconds(15), every: .milliseconds(250)) {
            let lines = await followed.lines
            return lines.filter { $0.source == "loco" }.count == 3 && lines.contains { $0.line.contains("/after-the-second-restart") }
        }
        let followedLines = await followed.lines.map(\.line)
        #expect(followedAll, "\(followedLines)")
        follower.cancel()
        let ended = await eventually(timeout: .seconds(10), every: .milliseconds(100)) { await followed.ended }
        #expect(ended, "a cancelled follow ends")

        // `loco logs` shows what Loco did, among the app's own lines.
        var said: [String] = []
        for try await line in runtime.logStream(team: "acme", app: "web", options: LogOptions()) where line.source == "loco" {
            #expect(line.service == "web" && line.deploymentID == serving.id, "\(line)")
            said.append(line.line)
        }
        #expect(said.count == 3 && said.first == "exited with code 137; started again (restart 1)"
                && said.dropFirst().first?.hasPrefix("exited with code 137; starts again in ") == true
                && said.dropFirst().first?.hasSuffix(" s (crash-loop back-off)") == true
                && said.last == "started again after its back-off (restart 2)", "\(said)")

        #expect(FileManager.default.fileExists(atPath: runtime.platformLog.file(team: "acme", app: "web").path))

        // A version that does not serve (one rolling out, an old one) is not started again.
        let image = try await runtime.run(["inspect", "--format", "{{.ImageName}}", name]).1.trimmingCharacters(in: .whitespacesAndNewlines)
        let spare: Int64 = 900_000 + serving.id
        let spareName = "loco-acme-web-d\(spare)-web"
        let spec = ServiceSpec(name: "web", image: image, port: 8080)
        // The image is in podman's storage already: start the container without a pull.
        _ = try await runtime.start(spec, named: spareName, replica: 1,
                                    DesiredState(team: "acme", app: "web", deploymentID: spare, services: [spec], pullCredentials: nil))
        try await kill(spareName)
        #expect(try await supervisor.pass().isEmpty)
        let down = try await instance(spareName)
        #expect(down?.state == "exited" && down?.restarts == 0 && down?.nextStartAt == nil, "\(String(describing: down))")
        try await runtime.remove(deploymentID: spare, team: "acme", app: "web")
        let kept = try await instance(name)
        #expect(kept?.state == "running" && kept?.restarts == 2, "\(String(describing: kept))")

        // A start that fails — its port taken while it was down — is said in its log and on the
        // instance, counts as a try, and is tried again after the back-off.
        let published = try await runtime.run(["port", name]).1.trimmingCharacters(in: .whitespacesAndNewlines)
        let address = try #require(published.components(separatedBy: " -> ").last?.split(separator: ":").map(String.init), "\(published)")
        let (hostIP, hostPort) = (try #require(address.first), try #require(address.last.flatMap { Int($0) }))
        try await kill(name)
        let squatter = try ChildProcess(URL(fileURLWithPath: "/usr/bin/python3"), ["-c", """
            import socket, time
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("\(hostIP)", \(hostPort))); s.listen(); print("bound", flush=True); time.sleep(120)
            """] as [String])
        defer { squatter.stop() }
        #expect(await eventually(timeout: .seconds(10)) { squatter.output.contains("bound") }, "\(squatter.output)")
        var refused: AppInstance?
        let triedAndFailed = try await eventually(timeout: .seconds(15), every: .milliseconds(250)) {
            #expect(try await supervisor.pass().isEmpty, "nothing starts while the port is taken")
            refused = try await instance(name)
            return refused?.startError != nil
        }
        #expect(triedAndFailed && refused?.state == "exited" && refused?.restarts == 2, "\(String(describing: refused))")
        #expect(refused?.startError?.contains("address already in use") == true, "\(String(describing: refused?.startError))")
        let retryAt = try #require(refused?.nextStartAt, "the next try is announced: \(String(describing: refused))")
        // From the failed try (podman may list the container as exited only a pass later).
        let containerID = try #require(try await runtime.listed().first { $0.name == name }?.Id)
        let triedAt = try #require(runtime.restartBook.read()[containerID]?.lastAttemptAt)
        #expect(retryAt == triedAt.addingTimeInterval(4), "the 4 s back-off from the failed try at \(triedAt): \(retryAt)")
        #expect(try await supervisor.pass().isEmpty, "the next try waits")
        var lastSaid: LogLine?
        for try await line in runtime.logStream(team: "acme", app: "web", options: LogOptions()) where line.source == "loco" { lastSaid = line }
        #expect(lastSaid?.line.hasPrefix("could not be started again (") == true && lastSaid?.line.contains("address already in use") == true
                && lastSaid?.line.hasSuffix("; tries again in 4 s") == true, "\(String(describing: lastSaid))")
        squatter.stop()
        var third: [ContainerSupervisor.Restart] = []
        let startedOnceFree = try await eventually(timeout: .seconds(15), every: .milliseconds(250)) {
            third = try await supervisor.pass()
            return !third.isEmpty
        }
        #expect(startedOnceFree && third.first?.restarts == 3, "\(third)")
        let back = try await instance(name)
        #expect(back?.state == "running" && back?.restarts == 3 && back?.startError == nil && back?.nextStartAt == nil, "\(String(describing: back))")
        let answersAgain = try await eventually(timeout: .seconds(10), every: .milliseconds(200)) {
            try await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "-m", "5", url]).output.contains("Version two")
        }
        #expect(answersAgain, "the app answers again at its address")
    }
}

/// What a followed log stream delivered.
actor FollowedLines {
    private(set) var lines: [LogLine] = []
    private(set) var ended = false
    func add(_ line: LogLine) { lines.append(line) }
    func end() { ended = true }
}
