import Foundation
import LocoCore
import LocoShared

/// One service of an app as it should run.
public struct ServiceSpec: Sendable, Equatable {
    public var name: String
    /// `REGISTRY/team/app@sha256:…`: what the push recorded.
    public var image: String
    /// The port the service listens on inside its container.
    public var port: Int
    /// Readiness: an HTTP GET here must answer 2xx or 3xx.
    public var healthPath: String
    public var env: [String: String]
    public var memoryBytes: Int64?
    public var cpus: Double?
    /// The path prefix the app's entry point routes to this service (`/` for one-service apps).
    public var pathPrefix: String
    /// How many containers run it (`loco scale`'s count, else loco.toml's `min_replicas`; at least one).
    public var replicas: Int

    public init(name: String, image: String, port: Int, healthPath: String = "/", env: [String: String] = [:], memoryBytes: Int64? = nil, cpus: Double? = nil,
                pathPrefix: String = "/", replicas: Int = 1) {
        self.pathPrefix = pathPrefix
        self.replicas = max(1, replicas)
        self.name = name
        self.image = image
        self.port = port
        self.healthPath = healthPath
        self.env = env
        self.memoryBytes = memoryBytes
        self.cpus = cpus
    }
}

/// A version of an app: what `apply` is asked to run.
public struct DesiredState: Sendable {
    public var team: String
    public var app: String
    public var deploymentID: Int64
    public var services: [ServiceSpec]
    /// How the runtime pulls the images (a pull credential through the token service).
    public var pullCredentials: RegistryCredentials?

    public init(team: String, app: String, deploymentID: Int64, services: [ServiceSpec], pullCredentials: RegistryCredentials?) {
        self.team = team
        self.app = app
        self.deploymentID = deploymentID
        self.services = services
        self.pullCredentials = pullCredentials
    }
}

/// Where each service of an applied version answers.
public struct AppliedVersion: Sendable, Equatable, Codable {
    public var deploymentID: Int64
    /// Service name → URL reachable from this machine.
    public var endpoints: [String: String]
}

/// How a rollout is going.
public enum RolloutState: Sendable, Equatable {
    case progressing(String)
    case ready
    case failed(RolloutFailure)
}

/// Why a version does not serve, in report terms shared by every runtime (local and Kubernetes).
public struct RolloutFailure: CodedError, Equatable {
    public var code: String
    public var message: String
    public var hint: String
    public var service: String?
    public var exitCode: Int32?
    public var logTail: [String]

    public static func imagePull(_ image: String, reason: String) -> RolloutFailure {
        // The registry answers "manifest unknown" for an image deleted from it (by hand, or by a
        // cleanup before Loco kept a record of what cleanup deleted; a redeploy of a recorded one is
        // refused before it starts).
        let gone = reason.contains("manifest unknown")
        return RolloutFailure(code: "IMAGE_PULL_FAILED",
                              message: gone ? "the registry no longer has the image \(image)" : "the image \(image) could not be pulled: \(reason.prefix(300))",
                              hint: gone ? "Cleanup keeps only the images of each app's last versions that served (the workers' --keep-images, 2 by default); deploy from source with 'loco deploy', or roll back to a newer deployment."
                                         : "Check the registry is reachable from the runtime and the app's pull credential is valid; deploy again to push a fresh image.",
                              service: nil, exitCode: nil, logTail: [])
    }

    public static func crashLoop(service: String, exitCode: Int32, tail: [String]) -> RolloutFailure {
        RolloutFailure(code: "CRASH_LOOP", message: "the container of \(service) exits right after start (exit code \(exitCode))",
                       hint: "Run 'loco logs' for the whole output, and check CMD/ENTRYPOINT in the Dockerfile and the env vars the app needs.",
                       service: service, exitCode: exitCode, logTail: tail)
    }

    public static func oomKilled(service: String, limit: Int64?, tail: [String]) -> RolloutFailure {
        RolloutFailure(code: "OOM_KILLED", message: "the container of \(service) was killed for using more than its memory\(limit.map { " (\($0 / 1024 / 1024) MiB)" } ?? "")",
                       hint: "Raise resources.memory in loco.toml or make the app use less memory.",
                       service: service, exitCode: 137, logTail: tail)
    }

    public static func readiness(service: String, path: String, last: String, tail: [String]) -> RolloutFailure {
        RolloutFailure(code: "READINESS_PROBE_FAILED", message: "\(service) runs but GET \(path) never answered with success (last: \(last))",
                       hint: "Make the health path answer 200 once the app is ready, or point run.health in loco.toml at one that does.",
                       service: service, exitCode: nil, logTail: tail)
    }

    public static func timeout(service: String, seconds: Int64, tail: [String]) -> RolloutFailure {
        RolloutFailure(code: "ROLLOUT_TIMEOUT", message: "\(service) did not become ready within \(seconds) s",
                       hint: "Check the app listens on run.port from loco.toml, on 0.0.0.0, and starts within the start grace period.",
                       service: service, exitCode: nil, logTail: tail)
    }
}

/// Where apps run: apply a version next to the serving one, follow its rollout, switch to it,
/// remove what is no longer needed. Local (podman) and Kubernetes runtimes share this shape and
/// the report codes above.
public protocol Runtime: AppRuntimeView {
    /// Starts `desired` without touching the version that serves now.
    func apply(_ desired: DesiredState) async throws -> AppliedVersion
    /// One look at how a deployment's version is doing.
    func status(deploymentID: Int64, team: String, app: String, services: [ServiceSpec]) async throws -> RolloutState
    /// Where the deployment's services answer.
    func endpoints(deploymentID: Int64, team: String, app: String) async throws -> [String: String]
    /// Makes the deployment's version the one that serves: the app's address routes to its
    /// services by path prefix. Returns the address. Older versions keep running until `retire`.
    func promote(deploymentID: Int64, team: String, app: String, services: [ServiceSpec]) async throws -> String
    /// Stops every version of the app older than `deploymentID` (the cleanup after its success);
    /// a newer one stays, as a cleanup may run late. Returns how many containers went.
    func retire(keeping deploymentID: Int64, team: String, app: String) async throws -> Int
    /// Removes one version (a failed or cancelled deployment's), leaving the others alone.
    func remove(deploymentID: Int64, team: String, app: String) async throws
    /// Removes every version of an app (the app was deleted).
    func removeApp(team: String, app: String) async throws
}

extension Runtime {
    /// The last lines each container of the app printed, oldest first (for reports).
    public func logs(team: String, app: String, tail: Int) async throws -> [String] {
        var lines: [String] = []
        for try await line in logStream(team: team, app: app, options: LogOptions(tail: tail)) { lines.append(line.line) }
        return lines
    }
}
