import BuildContext
import Foundation
import LocoCore
import LocoQueue
import Logging
import NIOPosix
import PostgresNIO
import Synchronization

/// Where a built image goes before it is pushed.
public enum ImageHandoff: String, Sendable, CaseIterable {
    /// The build writes an OCI layout to a folder the push workers read (one machine, or a shared
    /// filesystem). The push stage does the upload.
    case sharedDisk = "shared-disk"
    /// The build worker pushes right after building; the push stage then only checks the registry
    /// has the image. For pools spread over machines without a shared folder.
    case pushFromBuilder = "push-from-builder"
}

/// Everything the build and push stages need.
public struct StageSettings: Sendable {
    public var contexts: ContextStore
    /// Builds unpack here; images are handed over here (`images/`), so with `shared-disk` it must
    /// be the same folder for build and push workers.
    public var workFolder: URL
    public var builder: BuilderConfiguration
    /// `http://host:port` of the OCI registry; image references use `host:port`.
    public var registryURL: String
    public var registryCredentials: RegistryCredentials?
    public var handoff: ImageHandoff

    public init(contexts: ContextStore, workFolder: URL, builder: BuilderConfiguration, registryURL: String,
                registryCredentials: RegistryCredentials?, handoff: ImageHandoff = .sharedDisk) {
        self.contexts = contexts
        self.workFolder = workFolder
        self.builder = builder
        self.registryURL = registryURL
        self.registryCredentials = registryCredentials
        self.handoff = handoff
    }
}

/// The build and push stage handlers. They move deployments only through `CoreStore`.
public struct DeployStages: Sendable {
    let database: ConnectionPool
    let store: CoreStore
    let settings: StageSettings
    let builder: Builder
    let registry: RegistryClient
    let logger: Logger

    public init(database: ConnectionPool, settings: StageSettings, logger: Logger) throws {
        self.database = database
        self.store = CoreStore(logger: logger)
        self.settings = settings
        self.builder = try Builder(configuration: settings.builder, logger: logger)
        self.registry = RegistryClient(base: settings.registryURL, credentials: settings.registryCredentials, logger: logger)
        self.logger = logger
    }

    /// Registers handlers for the stages this process works.
    public func register(in handlers: inout JobHandlers, stages: Set<Stage>) {
        if stages.contains(.build) {
            handlers.register(kind: Stage.build.jobKind) { args, context in try await self.build(try Self.args(args), context) }
        }
        if stages.contains(.push) {
            handlers.register(kind: Stage.push.jobKind) { args, context in try await self.push(try Self.args(args), context) }
        }
    }

    static func args(_ text: String) throws -> DeploymentJobArgs {
        do { return try JSONDecoder().decode(DeploymentJobArgs.self, from: Data(text.utf8)) } catch {
            throw JobFailure.permanent("invalid_args", "deploy job args do not parse: \(text.prefix(200))")
        }
    }

    func imageFolder(_ deploymentID: Int64, _ service: String?) -> URL {
        settings.workFolder.appending(path: "images/d\(deploymentID)-\(service ?? "app")")
    }

    func buildFolder(_ deploymentID: Int64, _ service: String?) -> URL {
        settings.workFolder.appending(path: "builds/d\(deploymentID)-\(service ?? "app")")
    }

    func repository(_ deployment: Deployment) -> String { "\(deployment.team)/\(deployment.app)" }

    var registryHost: String {
        settings.registryURL.replacingOccurrences(of: "http://", with: "").replacingOccurrences(of: "https://", with: "")
    }

    // MARK: build

    func build(_ args: DeploymentJobArgs, _ context: JobContext) async throws {
        let id = args.deploymentID
        guard try await database.transaction({ try await store.stageStarted(deploymentID: id, stage: .build, service: args.service, on: $0) }),
              let deployment = try await store.deployment(id: id, on: database) else { return }
        let spec = BuildSpec.from(config: deployment.config, service: args.service)
        let folder = buildFolder(id, args.service)
        let image = imageFolder(id, args.service)
        // A retried attempt starts clean: the same inputs give the same image.
        try? FileManager.default.removeItem(at: folder)
        try? FileManager.default.removeItem(at: image)
        defer { try? FileManager.default.removeItem(at: folder) }
        try FileManager.default.createDirectory(at: image.deletingLastPathComponent(), withIntermediateDirectories: true)

        let result: BuildResult
        do {
            guard let digest = deployment.contextDigest, let archive = settings.contexts.path(digest: digest),
                  FileManager.default.fileExists(atPath: archive.path) else {
                throw BuildContextError.unreadable(reason: "the uploaded build context is no longer stored; deploy again")
            }
            let unpacked = folder.appending(path: "context")
            // libarchive blocks its thread for as long as a large context takes to unpack; that
            // thread must not be one of the event loops the worker's connections run on.
            _ = try await NIOThreadPool.singleton.runIfActive { try ContextUnpacker().unpack(archive, into: unpacked) }
            let contextFolder = unpacked.appending(path: spec.context).standardizedFileURL
            guard contextFolder.path == unpacked.standardizedFileURL.path || contextFolder.path.hasPrefix(unpacked.standardizedFileURL.path + "/") else {
                throw BuildContextError.invalidEntry(entry: spec.context, reason: "(build.context) points outside the uploaded folder")
            }
            let output = OutputEvents(deploymentID: id, service: args.service, store: store, database: database, logger: logger)
            defer { output.close() }
            result = try await builder.build(BuildRequest(contextFolder: contextFolder, dockerfile: spec.dockerfile, buildArgs: spec.args,
                                                          target: spec.target, output: image), onLine: output.add)
            await output.flush()
        } catch let failure as BuildFailure {
            if failure.isTransient { throw JobFailure.retryable(failure.code, failure.message) }
            try await report(id, stage: .build, code: failure.code, message: failure.message, hint: failure.hint, evidence: [
                "step": failure.step.map(JSONValue.string) ?? .null, "instruction": failure.instruction.map(JSONValue.string) ?? .null,
                "exit_code": failure.exitCode.map { .number(Double($0)) } ?? .null, "log_tail": .array(failure.logTail.map(JSONValue.string)),
                "service": args.service.map(JSONValue.string) ?? .null, "dockerfile": .string(spec.dockerfile),
            ])
            throw JobFailure.permanent(failure.code, failure.message)
        } catch let error as BuildContextError {
            try await report(id, stage: .build, code: "BUILD_CONTEXT_INVALID", message: error.message, hint: error.hint, evidence: [:])
            throw JobFailure.permanent("BUILD_CONTEXT_INVALID", error.message)
        }

        var stageResult = StageResult(message: "built \(args.service.map { "\($0): " } ?? "")\(result.layout.manifestDescriptor.digest), \(result.imageBytes) bytes")
        if settings.handoff == .pushFromBuilder {
            let pushed = try await pushImage(result.layout, deployment: deployment, service: args.service)
            stageResult = StageResult(imageDigest: pushed.digest, imageRef: pushed.reference, message: stageResult.message! + "; " + Self.describe(pushed))
            try? FileManager.default.removeItem(at: image)
        }
        _ = try await database.transaction { connection in
            let released = try await store.stageFinished(deploymentID: id, stage: .build, service: args.service, result: stageResult, on: connection)
            try await context.complete(in: connection)
            return released
        }
    }

    // MARK: push

    func push(_ args: DeploymentJobArgs, _ context: JobContext) async throws {
        let id = args.deploymentID
        guard try await database.transaction({ try await store.stageStarted(deploymentID: id, stage: .push, service: args.service, on: $0) }),
              let deployment = try await store.deployment(id: id, on: database) else { return }
        let result: StageResult
        let built = args.service.flatMap { deployment.images[$0] } ?? deployment.imageRef
        if settings.handoff == .pushFromBuilder, let built, let digest = Deployment.digest(of: built), digest.hasPrefix("sha256:") {
            // The builder pushed; make sure the registry really has it.
            let found = try await registry.manifestDigest(repository: repository(deployment), reference: digest,
                                                          accept: ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"])
            guard found == digest else {
                throw JobFailure.retryable("PUSH_FAILED", "the registry does not have \(digest) the build pushed")
            }
            result = StageResult(imageDigest: digest, imageRef: built, message: "the registry has \(digest)")
        } else {
            let folder = imageFolder(id, args.service)
            let layout: OCILayout
            do { layout = try OCILayout(folder: folder, reference: "latest") } catch {
                // The build's output is gone (another machine, a cleaned disk): build again.
                throw JobFailure.retryable("IMAGE_HANDOFF_MISSING", "no built image at \(folder.path); with several machines use --handoff push-from-builder")
            }
            let pushed = try await pushImage(layout, deployment: deployment, service: args.service)
            result = StageResult(imageDigest: pushed.digest, imageRef: pushed.reference, message: Self.describe(pushed))
        }
        _ = try await database.transaction { connection in
            let released = try await store.stageFinished(deploymentID: id, stage: .push, service: args.service, result: result, on: connection)
            try await context.complete(in: connection)
            return released
        }
        try? FileManager.default.removeItem(at: imageFolder(id, args.service))
    }

    /// Pushes as `REGISTRY/<team>/<app>:<random>-<deployment>`, mounting layers other apps of the
    /// team already pushed.
    func pushImage(_ layout: OCILayout, deployment: Deployment, service: String?) async throws -> PushResult {
        let random = UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(12)
        let tag = "\(random)-\(deployment.id)" + (service.map { "-\($0)" } ?? "")
        let siblings = try await store.recentlyPushedRepositories(team: deployment.team, except: deployment.app, on: database)
        do {
            return try await registry.push(layout, repository: repository(deployment), tag: tag, mountFrom: siblings)
        } catch let error as PushError {
            if error.isTransient { throw JobFailure.retryable(error.code, error.message) }
            try await report(deployment.id, stage: .push, code: error.code, message: error.message, hint: error.hint,
                             evidence: ["registry": .string(registryHost), "repository": .string(repository(deployment))])
            throw JobFailure.permanent(error.code, error.message)
        }
    }

    static func describe(_ pushed: PushResult) -> String {
        "pushed \(pushed.reference): uploaded \(pushed.uploadedBlobs) blobs (\(pushed.uploadedBytes) bytes), \(pushed.existingBlobs) already there, \(pushed.mountedBlobs) mounted"
    }

    func report(_ id: Int64, stage: Stage, code: String, message: String, hint: String, evidence: [String: JSONValue]) async throws {
        let released = try await database.transaction { connection in
            try await store.fail(deploymentID: id, report: FailureReport(stage: stage.rawValue, code: code, message: message, hint: hint, evidence: evidence),
                                 on: connection)
        }
        _ = try? await store.removeContexts(released, from: settings.contexts, on: database)
    }
}

/// Build output as deployment events, written in batches (a line per event, many lines per
/// statement), in order.
final class OutputEvents: Sendable {
    let deploymentID: Int64
    let service: String?
    let store: CoreStore
    let database: ConnectionPool
    let logger: Logger
    private let pending = LineBuffer()
    private let stream: AsyncStream<Void>.Continuation
    private let writer: Task<Void, Never>

    init(deploymentID: Int64, service: String?, store: CoreStore, database: ConnectionPool, logger: Logger) {
        self.deploymentID = deploymentID
        self.service = service
        self.store = store
        self.database = database
        self.logger = logger
        let (signals, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.stream = continuation
        let pending = self.pending
        writer = Task {
            for await _ in signals {
                let lines = pending.take()
                guard !lines.isEmpty else { continue }
                do {
                    try await database.transaction { connection in
                        try await store.appendEvents(deploymentID: deploymentID, type: "build_output", stage: "build", messages: lines,
                                                     data: service.map { .object(["service": .string($0)]) }, on: connection)
                    }
                } catch {
                    logger.warning("could not record build output", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    @Sendable func add(_ line: String) {
        pending.add(line)
        stream.yield()
    }

    /// Waits until everything added so far is written.
    func flush() async {
        stream.finish()
        await writer.value
    }

    func close() { stream.finish() }
}
