import BuildContext
import Foundation
import LocoCore
import LocoQueue
import LocoTestSupport
import PostgresNIO
import Testing
import Workers

@Suite("locod worker --queue build --queue push, as processes", .serialized)
struct WorkerBinaryStageTests {
    @Test("the real binaries with services from scripts/services, through a real PgBouncer in transaction mode (?pgbouncer=true): locod api + docker-registry (token auth) + locod worker take examples/hello from upload to serving")
    func binaries() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/buildah") else {
            throw TestSetupError("buildah is not installed: apt-get install -y buildah (scripts/test installs it)")
        }
        try await TestDatabase.with(migrations: []) { db in
            try await LocoStack.with(db: db, workerQueues: ["build=1", "push=1", "apply=1", "wait=1", "cleanup=1"],
                                 throughPgBouncer: true) { stack in
                let curl = URL(fileURLWithPath: "/usr/bin/curl")
                let (base, token, folder, workers, api) = (stack.base, stack.token, stack.folder, stack.workers, stack.api)
                let (registryURL, workerToken, baseImage) = (stack.registryURL, stack.workerToken, stack.baseImage)
                _ = try await runCommand(curl, ["-s", "-H", "Authorization: Bearer \(token)", "-H", "Content-Type: application/json",
                                                "-d", #"{"name":"web","team":"acme"}"#, "\(base)/v1/apps"])
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
                // Behind the pooler the worker polls; nothing was prepared by name on the way.
                #expect(workers.output.contains("mode=poll-only (pgbouncer=true)"), "\(workers.output.prefix(2000))")
                #expect(!workers.output.contains("SQLSTATE 26000") && !api.output.contains("SQLSTATE 26000"))
                // The runtime pulled with a credential of this app only, revoked after the pull.
                let pulls = try await stack.db.scalar("SELECT count(*) FROM loco_tokens WHERE kind = 'pull' AND app_id IS NOT NULL AND revoked_at IS NOT NULL",
                                                      as: Int64.self)
                #expect(pulls == 1)
            }
        }
    }
}
