import Foundation
import LocoCore
import LocoQueue
import Logging

/// The cleanup stage. After a success: older versions' containers are gone (the wait stage's
/// switch) and the registry keeps the images of the app's last `keepImages` versions that served
/// (the serving one among them; images of failed deployments go).
/// After a failure or cancel: the deployment's containers, build folders and image hand-off go,
/// and the serving version is left alone.
public struct CleanupStage: Sendable {
    let database: ConnectionPool
    let store: CoreStore
    let runtime: (any Runtime)?
    let registry: RegistryClient?
    let settings: StageSettings?
    let keepImages: Int
    let logger: Logger

    public init(database: ConnectionPool, runtime: (any Runtime)?, registry: RegistryClient?, settings: StageSettings?, keepImages: Int = 2, logger: Logger) {
        self.database = database
        self.store = CoreStore(logger: logger)
        self.runtime = runtime
        self.registry = registry
        self.settings = settings
        self.keepImages = keepImages
        self.logger = logger
    }

    public func register(in handlers: inout JobHandlers) {
        handlers.register(kind: Stage.cleanup.jobKind) { args, context in try await self.cleanup(try DeployStages.args(args), context) }
        handlers.register(AppRemovalArgs.self) { removal, _ in try await self.removeApp(removal) }
        handlers.register(kind: "registry.cleanup") { _, _ in _ = try await self.registryLifecycle() }
    }

    /// The registry's lifecycle (cron `registry-cleanup`, daily at 03:00): deletes images older
    /// than six months, except each app's newest `keepImages` and its serving one. The blobs
    /// they freed are reclaimed by the registry's garbage collection, which the operator runs
    /// with the registry stopped or read-only (`docker-registry garbage-collect config.yml`).
    public func registryLifecycle(olderThan age: Duration = .seconds(180 * 86_400)) async throws -> [String] {
        guard let registry else { return [] }
        var deleted: [String] = []
        for (appID, repository, digest) in try await store.expiredImages(olderThan: age, keep: keepImages, on: database) {
            if try await registry.deleteManifest(repository: repository, digest: digest) { deleted.append("\(repository)@\(digest)") }
            try await store.markPruned(appID: appID, digests: [digest], on: database)
        }
        logger.info("registry lifecycle", metadata: ["deleted": "\(deleted.count)"])
        return deleted
    }

    /// A deleted app: every container goes, and every image it pushed (idempotent: a retry
    /// finds less to do).
    func removeApp(_ removal: AppRemovalArgs) async throws {
        try await runtime?.removeApp(team: removal.team, app: removal.app)
        for digest in removal.images {
            _ = try await registry?.deleteManifest(repository: "\(removal.team)/\(removal.app)", digest: digest)
        }
        logger.info("removed a deleted app", metadata: ["app": "\(removal.team)/\(removal.app)", "images": "\(removal.images.count)"])
    }

    func cleanup(_ args: DeploymentJobArgs, _ context: JobContext) async throws {
        let id = args.deploymentID
        guard try await database.transaction({ try await store.stageStarted(deploymentID: id, stage: .cleanup, on: $0) }),
              let deployment = try await store.deployment(id: id, on: database) else { return }
        var done: [String] = []
        if deployment.state == .succeeded {
            if let runtime {
                // Only if this deployment still serves: a newer one may have taken over meanwhile.
                let serving = try await store.servingDeploymentID(appID: deployment.appID, on: database)
                if serving == id {
                    let removed = try await Self.uninterrupted { try await runtime.retire(keeping: id, team: deployment.team, app: deployment.app) }
                    done.append("stopped the previous version (\(removed) container\(removed == 1 ? "" : "s"))")
                }
            }
            let deleted = try await pruneImages(deployment)
            done.append("kept the images of the last \(keepImages) versions that served, deleted \(deleted.count)")
        } else {
            if let runtime {
                try await Self.uninterrupted { try await runtime.remove(deploymentID: id, team: deployment.team, app: deployment.app) }
                done.append("removed the \(deployment.state.rawValue) version's containers")
            }
            if let settings {
                for folder in ["builds", "images"] {
                    let parent = settings.workFolder.appending(path: folder)
                    for name in (try? FileManager.default.contentsOfDirectory(atPath: parent.path)) ?? [] where name.hasPrefix("d\(id)-") {
                        try? FileManager.default.removeItem(at: parent.appending(path: name))
                    }
                }
                _ = try? await store.removeContexts(deployment.contextDigest.map { [$0] } ?? [], from: settings.contexts, on: database)
                done.append("removed its build files")
            }
        }
        _ = try await database.transaction { connection in
            let released = try await store.stageFinished(deploymentID: id, stage: .cleanup,
                                                         result: StageResult(message: "cleanup: " + (done.isEmpty ? "nothing to do" : done.joined(separator: "; "))),
                                                         on: connection)
            try await context.complete(in: connection)
            return released
        }
    }

    /// Runs a container removal to its end even when the job is cancelled meanwhile (the app
    /// deleted during its cleanup): a cancelled handler's child processes are killed, and podman
    /// killed half-way through `rm` left the container's monitor (conmon) running. A removal
    /// takes seconds at most (`rm -t 5`).
    static func uninterrupted<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) async throws -> T {
        try await Task { try await work() }.value
    }

    /// Deletes, by digest, the app's images but those of its last `keepImages` versions that
    /// served (the serving one among them) and those an unfinished deployment still needs.
    func pruneImages(_ deployment: Deployment) async throws -> [String] {
        guard let registry else { return [] }
        var deleted: [String] = []
        for digest in try await store.imagesToPrune(appID: deployment.appID, keep: keepImages, on: database) {
            if try await registry.deleteManifest(repository: "\(deployment.team)/\(deployment.app)", digest: digest) { deleted.append(digest) }
            // Deleted now or found gone: either way not asked for again.
            try await store.markPruned(appID: deployment.appID, digests: [digest], on: database)
        }
        return deleted
    }
}
