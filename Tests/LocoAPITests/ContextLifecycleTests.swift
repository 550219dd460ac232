import Foundation
import LocoAPI
import LocoCore
import LocoTestSupport
import Synchronization
import Testing

/// A build context's file lives while an unfinished deployment names it, even when another
/// deployment of the same context has just ended and its removal is under way (an unchanged
/// redeploy: the CLI test once lost its context this way).
@Suite("Build context lifecycle")
struct ContextLifecycleTests {
    /// One upload of `bytes`, staged as the API stages it.
    static func stage(_ harness: Harness, _ bytes: Data) throws -> StagedContext {
        let upload = try harness.api.contexts.begin()
        try upload.write(Array(bytes))
        return try upload.finish()
    }

    static func submit(_ harness: Harness, _ app: App, _ staged: StagedContext) async throws -> Deployment {
        defer { staged.discard() }
        return try await harness.store.submit(DeploymentRequest(app: app, config: .object(["name": .string(app.name)]), context: staged,
                                                                createdBy: nil, queueBehind: false), on: harness.database.client)
    }

    /// An app whose one deployment of `bytes` has ended (its context is still stored), and that context's digest.
    static func appWithEndedDeployment(_ harness: Harness, _ bytes: Data) async throws -> (App, String) {
        let owner = try await harness.user("owner@example.com")
        let app = try await harness.app("web", in: try await harness.team("acme", owner: owner), owner: owner)
        let first = try await submit(harness, app, try stage(harness, bytes))
        _ = try await harness.store.cancel(deploymentID: first.id, on: harness.database.client)
        return (app, try #require(first.contextDigest))
    }

    @Test("a removal that read its list before a redeploy committed leaves the redeploy's context")
    func staleRemovalList() async throws {
        try await Harness.with { harness in
            let bytes = try await TarGz.sample()
            let (app, digest) = try await Self.appWithEndedDeployment(harness, bytes)
            // What a reconciler reads now: the first deployment ended, nothing else names the context.
            let stale = try await harness.store.recentlyReleasedContexts(on: harness.database.client)
            #expect(stale == [digest])

            let second = try await Self.submit(harness, app, try Self.stage(harness, bytes))
            #expect(second.contextDigest == digest)
            let removed = try await harness.store.removeContexts(stale, from: harness.api.contexts, on: harness.database.client)
            #expect(removed.isEmpty, "the removal deleted \(removed), which deployment \(second.id) needs")
            #expect(harness.api.contexts.contains(digest: digest))

            // Once the redeploy ends too, the reconciler deletes the file.
            _ = try await harness.store.cancel(deploymentID: second.id, on: harness.database.client)
            try await harness.api.reconcile()
            #expect(!harness.api.contexts.contains(digest: digest))
        }
    }

    @Test("a context removed while the redeploy's upload was arriving is placed again by the submit")
    func removalBeforeSubmit() async throws {
        try await Harness.with { harness in
            let bytes = try await TarGz.sample()
            let (app, digest) = try await Self.appWithEndedDeployment(harness, bytes)

            let staged = try Self.stage(harness, bytes)
            try await harness.api.reconcile()
            #expect(!harness.api.contexts.contains(digest: digest), "the reconciler should delete the ended deployment's context")
            let second = try await Self.submit(harness, app, staged)
            #expect(second.contextDigest == digest)
            #expect(harness.api.contexts.contains(digest: digest))
            let incoming = (try? FileManager.default.contentsOfDirectory(atPath: harness.contextRoot.appending(path: "incoming").path)) ?? []
            #expect(incoming.isEmpty, "uploads left behind: \(incoming)")
        }
    }

    @Test("redeploys of one context while a reconciler runs without pause never lose their file")
    func redeploysWhileReconciling() async throws {
        try await Harness.with { harness in
            let bytes = try await TarGz.sample()
            let (app, _) = try await Self.appWithEndedDeployment(harness, bytes)
            let stop = Atomic(false)
            let reconciler = Task {
                var rounds = 0
                while !stop.load(ordering: .relaxed) {
                    try await harness.api.reconcile()
                    rounds += 1
                }
                return rounds
            }
            var lost: [Int64] = []
            for _ in 0..<40 {
                let deployment = try await Self.submit(harness, app, try Self.stage(harness, bytes))
                if !harness.api.contexts.contains(digest: try #require(deployment.contextDigest)) { lost.append(deployment.id) }
                _ = try await harness.store.cancel(deploymentID: deployment.id, on: harness.database.client)
            }
            stop.store(true, ordering: .relaxed)
            let rounds = try await reconciler.value
            #expect(rounds > 0)
            #expect(lost.isEmpty, "deployments whose context was deleted under them: \(lost) (reconciler ran \(rounds) rounds)")
        }
    }
}
