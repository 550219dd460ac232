import Foundation
import LocoConfig
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

    /// The services to run, from the deployed config (validated at submit, defaults filled in):
    /// each with its own image, port, health path, limits and path prefix; app env vars on top of
    /// the config's `env`; as many replicas as `loco scale` set, else loco.toml's `min_replicas`.
    /// The apply stage fixes those counts on the deployment (`fixingReplicas`), so a scale change
    /// made meanwhile does not change what its wait stage expects.
    func services(_ deployment: Deployment, fixingReplicas: Bool = false) async throws -> [ServiceSpec] {
        let config: AppConfig
        do { config = try ConfigLoader.parse(json: deployment.config, defaultName: deployment.app) } catch {
            throw RolloutFailure(code: "CONFIG_INVALID", message: "the deployed config no longer reads: \(error.issues.first?.description ?? error.message)",
                                 hint: "Run 'loco validate' and deploy again.", service: nil, exitCode: nil, logTail: [])
        }
        var env = config.env
        for variable in try await store.env(appID: deployment.appID, on: database) { env[variable.name] = variable.value }
        var replicas = deployment.replicas ?? [:]
        if deployment.replicas == nil {
            let scaled = try await store.scale(appID: deployment.appID, on: database)
            for service in config.effectiveServices { replicas[service.name] = max(1, scaled[service.name] ?? service.resources.minReplicas) }
            if fixingReplicas { replicas = try await store.fixReplicas(deploymentID: deployment.id, replicas, on: database) }
        }
        return try config.effectiveServices.map { service in
            guard let image = deployment.image(of: service.name) else {
                throw RolloutFailure(code: "IMAGE_PULL_FAILED", message: "the deployment has no pushed image for \(service.name)",
                                     hint: "Deploy again; the push stage records the image this stage runs.", service: service.name, exitCode: nil, logTail: [])
            }
            return ServiceSpec(name: service.name, image: image, port: service.run.port, healthPath: service.run.health, env: env,
                               memoryBytes: service.resources.memoryBytes, cpus: service.resources.cpu, pathPrefix: service.path,
                               replicas: replicas[service.name] ?? service.resources.minReplicas)
        }
    }

    func apply(_ args: DeploymentJobArgs, _ context: JobContext) async throws {
        let id = args.deploymentID
        guard try await database.transaction({ try await store.stageStarted(deploymentID: id, stage: .apply, on: $0) }),
              let deployment = try await store.deployment(id: id, on: database) else { return }
        let version: AppliedVersion
        // The runtime pulls with a credential of this app only (a pull token that expires in 15
        // minutes, revoked once the pull is done), never with the worker's own: on Kubernetes it
        // becomes the namespace's image pull secret.
        let pull = try await appPullCredential(deployment)
        let services: [ServiceSpec]
        do {
            services = try await self.services(deployment, fixingReplicas: true)
            version = try await runtime.apply(DesiredState(team: deployment.team, app: deployment.app, deploymentID: id, services: services,
                                                           pullCredentials: pull?.credentials))
            if let pull { try? await store.revokeToken(id: pull.tokenID, on: database) }
        } catch let failure as RolloutFailure {
            if let pull { try? await store.revokeToken(id: pull.tokenID, on: database) }
            try? await runtime.remove(deploymentID: id, team: deployment.team, app: deployment.app)
            try await report(id, stage: .apply, failure)
            throw JobFailure.permanent(failure.code, failure.message)
        } catch {
            if let pull { try? await store.revokeToken(id: pull.tokenID, on: database) }
            throw error
        }
        // A container that exited at once has no published port to name; wait reports why.
        let started = services.map { service in
            (version.endpoints[service.name].map { "\(service.name) at \($0)" } ?? service.name) + (service.replicas > 1 ? " (\(service.replicas) replicas)" : "")
        }
            .sorted().joined(separator: ", ")
        _ = try await database.transaction { connection in
            let released = try await store.stageFinished(deploymentID: id, stage: .apply, result: StageResult(message: "started \(started)"), on: connection)
            try await context.complete(in: connection)
            return released
        }
    }

    /// A short-lived pull credential for the deployment's app, when the registry needs one.
    func appPullCredential(_ deployment: Deployment) async throws -> (credentials: RegistryCredentials, tokenID: Int64)? {
        guard pullCredentials != nil else { return nil }
        let created = try await store.createToken(kind: .pull, name: "runtime pull for deployment \(deployment.id)", userID: nil,
                                                  appID: deployment.appID, lifetime: .seconds(900), on: database)
        return (RegistryCredentials(username: "loco-pull", password: created.secret), created.token.id)
    }

    func wait(_ args: DeploymentJobArgs, _ context: JobContext) async throws {
        let id = args.deploymentID
        guard try await database.transaction({ try await store.stageStarted(deploymentID: id, stage: .wait, on: $0) }),
              let deployment = try await store.deployment(id: id, on: database) else { return }
        let services = try await services(deployment)
        let deadline = ContinuousClock.now + rolloutTimeout
        var lastReason = ""
        while true {
            switch try await runtime.status(deploymentID: id, team: deployment.team, app: deployment.app, services: services) {
            case .ready:
                // The switch: the new version serves, the old ones stop.
                let url: String
                do { url = try await runtime.promote(deploymentID: id, team: deployment.team, app: deployment.app, services: services) } catch let failure as RolloutFailure {
                    try await fail(deployment, failure)
                }
                _ = try await database.transaction { connection in
                    let released = try await store.stageFinished(deploymentID: id, stage: .wait, result: StageResult(message: "serving at \(url)", url: url),
                                                                 on: connection)
                    try await context.complete(in: connection)
                    return released
                }
                return
            case .failed(let failure):
                try await fail(deployment, failure)
            case .progressing(let reason):
                // What the rollout waits for, each time it changes ("web: GET / answered 503").
                if reason != lastReason {
                    lastReason = reason
                    _ = try? await database.transaction { connection in
                        try await store.appendEvent(deploymentID: id, type: "progress", stage: Stage.wait.rawValue, message: String(reason.prefix(500)), on: connection)
                    }
                }
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
                // Only what is known: an image that cannot be pulled has no service output or exit code.
                evidence: ["service": failure.service.map(JSONValue.string), "exit_code": failure.exitCode.map { .number(Double($0)) },
                           "log_tail": failure.logTail.isEmpty ? nil : .array(failure.logTail.map(JSONValue.string))].compactMapValues { $0 }),
                on: connection)
        }
    }
}
