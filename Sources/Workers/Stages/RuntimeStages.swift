import Foundation
import LocoCore
import LocoQueue
import Logging

/// The apply and wait stage handlers: start the new version next to the serving one, wait until
/// it really serves, then switch to it; on failure, report and remove it, leaving the previous
/// version serving.
public struct RuntimeStages: Sendable {
    let database: ConnectionPool
    let store: CoreStore
    let runtime: any Runtime
    let pullCredentials: RegistryCredentials?
    /// How long a version may take to become ready.
    let rolloutTimeout: Duration
    let probeInterval: Duration
    let logger: Logger

    public init(database: ConnectionPool, runtime: any Runtime, pullCredentials: RegistryCredentials?, rolloutTimeout: Duration = .seconds(60),
                probeInterval: Duration = .milliseconds(250), logger: Logger) {
        self.database = database
        self.store = CoreStore(logger: logger)
        self.runtime = runtime
        self.pullCredentials = pullCredentials
        self.rolloutTimeout = rolloutTimeout
        self.probeInterval = probeInterval
        self.logger = logger
    }

    public func register(in handlers: inout JobHandlers, stages: Set<Stage>) {
        if stages.contains(.apply) {
            handlers.register(kind: Stage.apply.jobKind) { args, context in try await self.apply(try DeployStages.args(args), context) }
        }
        if stages.contains(.wait) {
            handlers.register(kind: Stage.wait.jobKind) { args, context in try await self.wait(try DeployStages.args(args), context) }
        }
    }

    /// The services to run, from the deployed config: `run.port` (8080), `run.health` ("/"),
    /// `resources.memory` ("256Mi", "1Gi" or MiB), `resources.cpu`, `env`; app env vars on top.
    func services(_ deployment: Deployment) async throws -> [ServiceSpec] {
        guard let image = deployment.imageRef else {
            throw RolloutFailure(code: "IMAGE_PULL_FAILED", message: "the deployment has no pushed image",
                                 hint: "Deploy again; the push stage records the image this stage runs.", service: nil, exitCode: nil, logTail: [])
        }
        let config = deployment.config
        var env: [String: String] = [:]
        if case .object(let inline)? = config["env"] { for (key, value) in inline { if let text = value.stringValue { env[key] = text } } }
        for variable in try await store.env(appID: deployment.appID, on: database) { env[variable.name] = variable.value }
        var port = 8080
        if case .number(let number)? = config["run"]?["port"] { port = Int(number) }
        let health = config["run"]?["health"]?.stringValue ?? "/"
        let memory = Self.bytes(config["resources"]?["memory"])
        var cpus: Double?
        if case .number(let number)? = config["resources"]?["cpu"] { cpus = number }
        let names = DeploymentPlan.services(in: config)
        return names.map { ServiceSpec(name: $0, image: image, port: port, healthPath: health.hasPrefix("/") ? health : "/" + health, env: env,
                                       memoryBytes: memory, cpus: cpus) }
    }

    static func bytes(_ value: JSONValue?) -> Int64? {
        switch value {
        case .number(let mebibytes)?: return Int64(mebibytes * 1024 * 1024)
        case .string(let text)?:
            let units: [(String, Double)] = [("Gi", 1_073_741_824), ("Mi", 1_048_576), ("Ki", 1024), ("G", 1e9), ("M", 1e6), ("K", 1e3)]
            for (suffix, factor) in units where text.hasSuffix(suffix) {
                return Double(text.dropLast(suffix.count)).map { Int64($0 * factor) }
            }
            return Int64(text)
        default: return nil
        }
    }

    func apply(_ args: DeploymentJobArgs, _ context: JobContext) async throws {
        let id = args.deploymentID
        guard try await database.transaction({ try await store.stageStarted(deploymentID: id, stage: .apply, on: $0) }),
              let deployment = try await store.deployment(id: id, on: database) else { return }
        let version: AppliedVersion
        do {
            let services = try await services(deployment)
            version = try await runtime.apply(DesiredState(team: deployment.team, app: deployment.app, deploymentID: id, services: services,
                                                           pullCredentials: pullCredentials))
        } catch let failure as RolloutFailure {
            try? await runtime.remove(deploymentID: id, team: deployment.team, app: deployment.app)
            try await report(id, stage: .apply, failure)
            throw JobFailure.permanent(failure.code, failure.message)
        }
        let started = version.endpoints.sorted { $0.key < $1.key }.map { "\($0.key) at \($0.value)" }.joined(separator: ", ")
        _ = try await database.transaction { connection in
            let released = try await store.stageFinished(deploymentID: id, stage: .apply, result: StageResult(message: "started \(started)"), on: connection)
            try await context.complete(in: connection)
            return released
        }
    }

    func wait(_ args: DeploymentJobArgs, _ context: JobContext) async throws {
        let id = args.deploymentID
        guard try await database.transaction({ try await store.stageStarted(deploymentID: id, stage: .wait, on: $0) }),
              let deployment = try await store.deployment(id: id, on: database) else { return }
        let services = try await services(deployment)
        let deadline = ContinuousClock.now + rolloutTimeout
        while true {
            switch try await runtime.status(deploymentID: id, team: deployment.team, app: deployment.app, services: services) {
            case .ready:
                // The switch: the new version serves, the old ones stop.
                try await runtime.promote(deploymentID: id, team: deployment.team, app: deployment.app)
                let endpoints = try await runtime.endpoints(deploymentID: id, team: deployment.team, app: deployment.app)
                let serving = endpoints.sorted { $0.key < $1.key }.map(\.value).joined(separator: ", ")
                _ = try await database.transaction { connection in
                    let released = try await store.stageFinished(deploymentID: id, stage: .wait, result: StageResult(message: "serving at \(serving)"),
                                                                 on: connection)
                    try await context.complete(in: connection)
                    return released
                }
                return
            case .failed(let failure):
                try await fail(deployment, failure)
            case .progressing(let reason):
                if ContinuousClock.now >= deadline {
                    let service = services.first?.name ?? "app"
                    let tail = (try? await runtime.logs(team: deployment.team, app: deployment.app, tail: 30)) ?? []
                    try await fail(deployment, reason.contains("answered")
                        ? .readiness(service: service, path: services.first?.healthPath ?? "/", last: reason, tail: tail)
                        : .timeout(service: service, seconds: rolloutTimeout.components.seconds, tail: tail))
                }
                try await Task.sleep(for: probeInterval)
            }
        }
    }

    /// Reports the failure, removes the failed version (the previous one keeps serving) and ends the job.
    func fail(_ deployment: Deployment, _ failure: RolloutFailure) async throws -> Never {
        try? await runtime.remove(deploymentID: deployment.id, team: deployment.team, app: deployment.app)
        try await report(deployment.id, stage: .wait, failure)
        throw JobFailure.permanent(failure.code, failure.message)
    }

    func report(_ id: Int64, stage: Stage, _ failure: RolloutFailure) async throws {
        _ = try await database.transaction { connection in
            try await store.fail(deploymentID: id, report: FailureReport(
                stage: stage.rawValue, code: failure.code, message: failure.message,
                hint: failure.hint.replacingOccurrences(of: "'loco logs'", with: "'loco logs --deployment \(id)'"),
                evidence: ["service": failure.service.map(JSONValue.string) ?? .null,
                           "exit_code": failure.exitCode.map { .number(Double($0)) } ?? .null,
                           "log_tail": .array(failure.logTail.map(JSONValue.string))]), on: connection)
        }
    }
}
