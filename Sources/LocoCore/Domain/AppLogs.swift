import Foundation

/// Where an app's own output comes from: the runtime it runs on. The API streams it to
/// `GET /v1/apps/{app}/logs`; `locod api` wires the configured runtime in.
public protocol AppLogSource: Sendable {
    /// The app's log lines, oldest first, from every container of the serving version (and of one
    /// starting); with `follow`, new lines as they come until the stream is cancelled.
    func logStream(team: String, app: String, options: LogOptions) -> AsyncThrowingStream<LogLine, any Error>
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

    public init(at: Date?, service: String, deploymentID: Int64?, replica: Int = 1, line: String) {
        self.at = at
        self.service = service
        self.deploymentID = deploymentID
        self.replica = replica
        self.line = line
    }

    enum CodingKeys: String, CodingKey { case at, service, deploymentID = "deployment_id", replica, line }
}
