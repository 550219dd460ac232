import Foundation

/// Where an app's own output comes from: the runtime it runs on. The API streams it to
/// `GET /v1/apps/{app}/logs`; `locod api` wires the configured runtime in.
public protocol AppLogSource: Sendable {
    /// The app's log lines, oldest first, from every container of the serving version (and of one
    /// starting); with `follow`, new lines as they come until the stream is cancelled.
    func logStream(team: String, app: String, options: LogOptions) -> AsyncThrowingStream<LogLine, any Error>
}

/// What the API may ask the runtime about an app: its output, and what of it runs now.
public protocol AppRuntimeView: AppLogSource {
    /// Every container (pod) of the app, of every version still there, as the runtime sees it.
    func instances(team: String, app: String) async throws -> [AppInstance]
}

/// One running copy of a service: a container on the local runtime (a pod on Kubernetes).
public struct AppInstance: Sendable, Equatable, Codable {
    public var service: String
    /// 1, 2, … among the service's replicas.
    public var replica: Int
    public var deploymentID: Int64?
    /// The runtime's own name for it (`podman ps`, `kubectl get pods`).
    public var name: String
    /// The runtime's word: running, exited, created, …
    public var state: String
    /// How often it was started again after it exited.
    public var restarts: Int
    /// The exit code of its last run that ended, when it has ended or restarted.
    public var lastExitCode: Int32?
    public var startedAt: Date?
    /// When one that exited starts again (it waits out a crash-loop back-off).
    public var nextStartAt: Date?
    /// Why the last try to start it again failed (the runtime's words), while it stays down.
    public var startError: String?

    public init(service: String, replica: Int, deploymentID: Int64?, name: String, state: String, restarts: Int, lastExitCode: Int32?, startedAt: Date?,
                nextStartAt: Date? = nil, startError: String? = nil) {
        self.service = service
        self.replica = replica
        self.deploymentID = deploymentID
        self.name = name
        self.state = state
        self.restarts = restarts
        self.lastExitCode = lastExitCode
        self.startedAt = startedAt
        self.nextStartAt = nextStartAt
        self.startError = startError
    }

    enum CodingKeys: String, CodingKey {
        case service, replica, deploymentID = "deployment_id", name, state, restarts, lastExitCode = "last_exit_code", startedAt = "started_at", nextStartAt = "next_start_at",
             startError = "start_error"
    }
}

public struct LogOptions: Sendable, Equatable {
    public var follow: Bool
    public var since: Date?
    /// The last lines per container; nil for all.
    public var tail: Int?
    /// Only this service's containers; nil for all.
    public var service: String?

    public init(follow: Bool = false, since: Date? = nil, tail: Int? = nil, service: String? = nil) {
        self.follow = follow
        self.since = since
        self.tail = tail
        self.service = service
    }
}

/// One line an app printed.
public struct LogLine: Sendable, Equatable, Codable {
    public var at: Date?
    public var service: String
    public var deploymentID: Int64?
    /// Which of the service's replicas printed it (1, 2, …): with several, lines interleave.
    public var replica: Int
    public var line: String
    /// `loco` for what Loco says about the container (a restart, a crash-loop back-off); nil
    /// for the app's own output.
    public var source: String?

    public init(at: Date?, service: String, deploymentID: Int64?, replica: Int = 1, line: String, source: String? = nil) {
        self.at = at
        self.service = service
        self.deploymentID = deploymentID
        self.replica = replica
        self.line = line
        self.source = source
    }

    enum CodingKeys: String, CodingKey { case at, service, deploymentID = "deployment_id", replica, line, source }
}
