import BuildContext
import Foundation
import HTTPTypes
import LocoAPI
import LocoCore
import LocoQueue
import LocoTestSupport
import NIOCore
import PostgresNIO
import Testing
import Workers

@Suite("Build and push stages end to end", .serialized)
struct BuildPushStageTests {
    static let manifestTypes = ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"]

    static func deployBody(_ files: [String: String], in folder: URL) throws -> (HTTPFields, ByteBuffer) {
        let source = folder.appending(path: "src-\(UUID().uuidString)")
        for (path, text) in files {
            let url = source.appending(path: path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: url, atomically: true, encoding: .utf8)
        }
        let archive = folder.appending(path: "ctx-\(UUID().uuidString).tar.gz")
        try ContextPacker(folder: source).pack(to: archive)
        // No name: the app is the one in the URL (the same body goes to two apps below).
        return Harness.deployBody(config: "{}", context: try Data(contentsOf: archive))
    }

    @Test("a deployment goes through real build (buildah) and push (registry): digest recorded, output in events; an unchanged redeploy uploads nothing; a broken Dockerfile fails with its report")
    func endToEnd() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/buildah") else {
            throw TestSetupError("buildah is not installed: apt-get install -y buildah (scripts/test installs it)")
        }
        try await RegistryPushTests.withRegistry { registry, harness, worker, folder in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            _ = try await harness.app("web", in: team, owner: ann)
            let token = try await harness.token(for: ann)
            let db = harness.database
            let settings = StageSettings(
                contexts: harness.api.contexts, workFolder: folder.appending(path: "work"),
                builder: BuilderConfiguration(stateFolder: folder.appending(path: "work/buildah"), timeout: .seconds(120)),
                registryURL: "http://127.0.0.1:\(registry.port)", registryCredentials: RegistryCredentials(username: "w", password: worker))
            var handlers = JobHandlers()
            try DeployStages(database: db.client, settings: settings, logger: db.logger).register(in: &handlers, stages: [.build, .push])
            let client = RegistryClient(base: settings.registryURL, credentials: settings.registryCredentials, logger: db.logger)

            func deploy(_ files: [String: String]) async throws -> Int64 {
                let (headers, body) = try Self.deployBody(files, in: folder)
                let reply = try await harness.call(.post, "/v1/apps/web/deployments", token: token, headers: headers, body: body)
                #expect(reply.status == 201, "\(reply.text)")
                guard case .number(let id)? = reply.json?["id"] else { throw TestSetupError("no id: \(reply.text)") }
                return Int64(id)
            }
            func pushed(_ id: Int64) async throws -> Bool {
                try await db.state(ofDeploymentJob: id, stage: "push") == "completed"
            }

            try await db.withWorker(fastConfiguration([("build", 2), ("push", 2)]), handlers: handlers) { _ in
                let app = ["Dockerfile": "FROM scratch\nCOPY index.html /srv/index.html\n", "index.html": "<h1>hello</h1>\n"]
                let first = try await deploy(app)
                let done = try await eventually(timeout: .seconds(60), every: .milliseconds(100)) { try await pushed(first) }
                #expect(done, "first deployment never finished its push")
                let deployment = try #require(try await harness.store.deployment(id: first, on: db.client))
                let digest = try #require(deployment.imageDigest)
                #expect(deployment.imageRef == "127.0.0.1:\(registry.port)/acme/web@\(digest)")
                #expect(try await client.manifestDigest(repository: "acme/web", reference: digest, accept: Self.manifestTypes) == digest)
                let events = try await harness.store.events(deploymentID: first, after: 0, on: db.client)
                #expect(events.contains { $0.type == "build_output" && $0.message.hasPrefix("STEP 2/2: COPY") }, "\(events.map(\.message))")
                let firstPush = try #require(events.last { $0.type == "stage_finished" && $0.stage == "push" })
                #expect(!firstPush.message.contains("uploaded 0 blobs"), "\(firstPush.message)")

                // The same app again (after cancelling the first, which no apply worker takes): zero bytes.
                _ = try await harness.call(.post, "/v1/deployments/\(first)/cancel", token: token)
                let second = try await deploy(app)
                let secondDone = try await eventually(timeout: .seconds(60), every: .milliseconds(100)) { try await pushed(second) }
                #expect(secondDone)
                let again = try #require(try await harness.store.deployment(id: second, on: db.client))
                #expect(again.imageDigest == digest, "the unchanged context builds to the same image")
                let secondPush = try #require(try await harness.store.events(deploymentID: second, after: 0, on: db.client)
                    .last { $0.type == "stage_finished" && $0.stage == "push" })
                #expect(secondPush.message.contains("uploaded 0 blobs (0 bytes)"), "\(secondPush.message)")
                _ = try await harness.call(.post, "/v1/deployments/\(second)/cancel", token: token)

                // A Dockerfile step that fails: the deployment fails with the step in its report.
                let broken = try await deploy(["Dockerfile": "FROM scratch\nCOPY index.html /\nRUN make\n", "index.html": "x\n"])
                let failed = try await eventually(timeout: .seconds(60), every: .milliseconds(100)) {
                    try await harness.store.deployment(id: broken, on: db.client)?.state == .failed
                }
                #expect(failed)
                let report = try #require(try await harness.store.deployment(id: broken, on: db.client)?.report)
                #expect(report.stage == "build" && report.code == "BUILD_FAILED", "\(report)")
                #expect(report.evidence["step"] == .string("3/3") && report.evidence["instruction"] == .string("RUN make"), "\(report.evidence)")
                #expect(!report.hint.isEmpty)
                let reply = try await harness.call(.get, "/v1/deployments/\(broken)", token: token)
                #expect(reply.json?["report"]?["code"] == .string("BUILD_FAILED"))

                // A context that climbs out of its folder passes the upload checks (it is a fine
                // gzip'd tar) but the build worker refuses it, naming the entry.
                let hostile = folder.appending(path: "hostile.tar.gz")
                let crafted = try await runCommand(URL(fileURLWithPath: "/usr/bin/python3"), ["-c", """
                    import io, tarfile, sys
                    t = tarfile.open(sys.argv[1], "w:gz")
                    for name in ["Dockerfile", "../../escape.txt"]:
                        data = b"FROM scratch\\n"
                        info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
                    t.close()
                    """, hostile.path])
                #expect(crafted.status == 0, "\(crafted.output)")
                let (headers, body) = Harness.deployBody(config: #"{"name":"web"}"#, context: try Data(contentsOf: hostile))
                let created = try await harness.call(.post, "/v1/apps/web/deployments", token: token, headers: headers, body: body)
                #expect(created.status == 201, "\(created.text)")
                guard case .number(let hostileID)? = created.json?["id"] else { throw TestSetupError("no id: \(created.text)") }
                let refused = try await eventually(timeout: .seconds(60), every: .milliseconds(100)) {
                    try await harness.store.deployment(id: Int64(hostileID), on: db.client)?.state == .failed
                }
                #expect(refused)
                let hostileReport = try #require(try await harness.store.deployment(id: Int64(hostileID), on: db.client)?.report)
                #expect(hostileReport.code == "BUILD_CONTEXT_INVALID" && hostileReport.message.contains("../../escape.txt"), "\(hostileReport)")
                #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "escape.txt").path))
            }
            // Nothing of the builds is left in the work folder.
            let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: folder.appending(path: "work/builds").path)) ?? []
            #expect(leftovers.isEmpty, "\(leftovers)")
        }
    }
}

@Suite("Image hand-off settings", .serialized)
struct ImageHandoffTests {
    @Test("push-from-builder pushes from the build worker and the push stage only checks the registry; a push worker with no image to hand over retries with IMAGE_HANDOFF_MISSING")
    func handoffModes() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/buildah") else {
            throw TestSetupError("buildah is not installed: apt-get install -y buildah (scripts/test installs it)")
        }
        try await RegistryPushTests.withRegistry { registry, harness, worker, folder in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            _ = try await harness.app("web", in: team, owner: ann)
            _ = try await harness.app("api", in: team, owner: ann)
            let token = try await harness.token(for: ann)
            let db = harness.database
            let credentials = RegistryCredentials(username: "w", password: worker)
            func settings(_ handoff: ImageHandoff, work: String) -> StageSettings {
                StageSettings(contexts: harness.api.contexts, workFolder: folder.appending(path: work),
                              builder: BuilderConfiguration(stateFolder: folder.appending(path: "\(work)/buildah"), timeout: .seconds(120)),
                              registryURL: "http://127.0.0.1:\(registry.port)", registryCredentials: credentials, handoff: handoff)
            }
            let (headers, body) = try BuildPushStageTests.deployBody(["Dockerfile": "FROM scratch\nCOPY index.html /\n", "index.html": "hi\n"], in: folder)

            // push-from-builder: the build worker pushes; the push stage confirms.
            var direct = JobHandlers()
            try DeployStages(database: db.client, settings: settings(.pushFromBuilder, work: "direct"), logger: db.logger).register(in: &direct, stages: [.build, .push])
            let first = try await harness.call(.post, "/v1/apps/web/deployments", token: token, headers: headers, body: body)
            guard case .number(let firstID)? = first.json?["id"] else { throw TestSetupError("no id: \(first.text)") }
            try await db.withWorker(fastConfiguration([("build", 1), ("push", 1)]), handlers: direct) { _ in
                let pushed = try await eventually(timeout: .seconds(60), every: .milliseconds(100)) {
                    try await db.state(ofDeploymentJob: Int64(firstID), stage: "push") == "completed"
                }
                #expect(pushed)
            }
            let deployment = try #require(try await harness.store.deployment(id: Int64(firstID), on: db.client))
            let digest = try #require(deployment.imageDigest)
            let events = try await harness.store.events(deploymentID: deployment.id, after: 0, on: db.client)
            #expect(events.contains { $0.stage == "build" && $0.type == "stage_finished" && $0.message.contains("pushed") }, "\(events.map(\.message))")
            #expect(events.contains { $0.stage == "push" && $0.message.contains("the registry has \(digest)") }, "\(events.map(\.message))")

            // shared-disk, but build and push on different work folders (two machines): the push
            // attempt fails as retryable with IMAGE_HANDOFF_MISSING, naming the setting.
            var builderHandlers = JobHandlers()
            try DeployStages(database: db.client, settings: settings(.sharedDisk, work: "machine-a"), logger: db.logger).register(in: &builderHandlers, stages: [.build])
            var pusherHandlers = JobHandlers()
            try DeployStages(database: db.client, settings: settings(.sharedDisk, work: "machine-b"), logger: db.logger).register(in: &pusherHandlers, stages: [.push])
            let second = try await harness.call(.post, "/v1/apps/api/deployments", token: token, headers: headers, body: body)
            guard case .number(let secondID)? = second.json?["id"] else { throw TestSetupError("no id: \(second.text)") }
            try await db.withWorker(fastConfiguration([("build", 1)]), handlers: builderHandlers) { _ in
                let built = try await eventually(timeout: .seconds(60), every: .milliseconds(100)) {
                    try await db.state(ofDeploymentJob: Int64(secondID), stage: "build") == "completed"
                }
                #expect(built)
            }
            try await db.withWorker(fastConfiguration([("push", 1)]), handlers: pusherHandlers) { _ in
                let retried = try await eventually(timeout: .seconds(30), every: .milliseconds(100)) {
                    try await db.scalar("""
                        SELECT count(*) FROM loco_deployment_jobs dj JOIN loco_jobs j ON j.id = dj.job_id
                        WHERE dj.deployment_id = \(Int64(secondID)) AND dj.stage = 'push' AND j.errors::text LIKE '%IMAGE_HANDOFF_MISSING%push-from-builder%'
                        """, as: Int64.self) > 0
                }
                #expect(retried)
            }
        }
    }
}
