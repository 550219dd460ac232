import Foundation
import LocoShared

/// A member's role in a team, from most to least powerful.
public enum Role: String, Sendable, Codable, CaseIterable, Comparable {
    case owner, admin, developer, viewer

    var rank: Int {
        switch self {
        case .owner: 3
        case .admin: 2
        case .developer: 1
        case .viewer: 0
        }
    }

    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rank < rhs.rank }
}

/// What an app is; types without a Dockerfile skip build and push.
public enum AppType: String, Sendable, Codable, CaseIterable {
    case service, `static`, redis, postgres, blob

    public var isBuilt: Bool { self == .service || self == .static }
}

/// Where a deployment is. The last three are final.
public enum DeploymentState: String, Sendable, Codable, CaseIterable {
    case queued, building, pushing, applying, waiting, succeeded, failed, cancelled

    public var isFinal: Bool { self == .succeeded || self == .failed || self == .cancelled }
    public static let inFlight: [DeploymentState] = [.queued, .building, .pushing, .applying, .waiting]
}

/// The stages of the pipeline, in order; each maps to a job kind and a queue of the same name.
public enum Stage: String, Sendable, Codable, CaseIterable {
    case build, push, apply, wait, cleanup

    /// The deployment state while this stage runs (cleanup runs after the outcome is known).
    public var runningState: DeploymentState? {
        switch self {
        case .build: .building
        case .push: .pushing
        case .apply: .applying
        case .wait: .waiting
        case .cleanup: nil
        }
    }

    public var jobKind: String { "deploy.\(rawValue)" }
    public var queue: String { rawValue }
}

public struct Team: Sendable, Codable, Equatable {
    public var id: Int64
    public var name: String
    public var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case id, name, createdAt = "created_at"
    }
}

public struct User: Sendable, Codable, Equatable {
    public var id: Int64
    public var email: String
    public var name: String
    public var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case id, email, name, createdAt = "created_at"
    }
}

public struct Member: Sendable, Codable, Equatable {
    public var userID: Int64
    public var email: String
    public var name: String
    public var role: Role
    public var joinedAt: Date

    enum CodingKeys: String, CodingKey {
        case userID = "user_id", email, name, role, joinedAt = "joined_at"
    }
}

public struct App: Sendable, Codable, Equatable {
    public var id: Int64
    public var teamID: Int64
    public var team: String
    public var name: String
    public var type: AppType
    /// `nil` once the owner's account is gone.
    public var ownerID: Int64?
    public var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case id, teamID = "team_id", team, name, type, ownerID = "owner_id", createdAt = "created_at"
    }
}

/// Start and end of one stage of one deployment.
public struct StageTiming: Sendable, Codable, Equatable {
    public var startedAt: Date?
    public var finishedAt: Date?

    enum CodingKeys: String, CodingKey {
        case startedAt = "started_at", finishedAt = "finished_at"
    }
}

/// What the user sees when a deployment failed: which stage, why, the evidence, the next step.
public struct FailureReport: Sendable, Codable, Equatable {
    public var stage: String
    public var code: String
    public var message: String
    public var hint: String
    public var evidence: [String: JSONValue]
    public var attempts: [JSONValue]

    public init(stage: String, code: String, message: String, hint: String,
                evidence: [String: JSONValue] = [:], attempts: [JSONValue] = []) {
        self.stage = stage
        self.code = code
        self.message = message
        self.hint = hint
        self.evidence = evidence
        self.attempts = attempts
    }
}

public struct Deployment: Sendable, Codable, Equatable {
    /// The image a service runs: its own, or the app's only one.
    public func image(of service: String) -> String? { images[service] ?? imageRef }

    public var id: Int64
    public var appID: Int64
    public var app: String
    public var team: String
    public var state: DeploymentState
    /// Waits for the app's current deployment to end before it starts.
    public var queuedBehind: Int64?
    public var createdBy: Int64?
    public var config: JSONValue
    public var contextDigest: String?
    public var contextBytes: Int64?
    public var imageDigest: String?
    public var imageRef: String?
    /// Service name → pushed image reference (by digest).
    public var images: [String: String]
    /// Where the version answers once it serves.
    public var url: String?
    public var stages: [String: StageTiming]
    public var report: FailureReport?
    public var cancelRequested: Bool
    /// The deployment whose pushed images this one runs again (a rollback), without a build.
    public var redeployOf: Int64?
    /// Service name → how many replicas its apply stage ran (`nil` until apply starts).
    public var replicas: [String: Int]?
    /// Why it was made, when not by `loco deploy`: "rollback to 27", "env: set A", "scaling web to 3 replicas".
    public var reason: String?
    public var createdAt: Date
    public var finishedAt: Date?

    enum CodingKeys: String, CodingKey {
        case id, appID = "app_id", app, team, state, queuedBehind = "queued_behind", createdBy = "created_by", config
        case contextDigest = "context_digest", contextBytes = "context_bytes", imageDigest = "image_digest"
        case imageRef = "image_ref", images, url, stages, report, cancelRequested = "cancel_requested", redeployOf = "redeploy_of"
        case replicas, reason, createdAt = "created_at", finishedAt = "finished_at"
    }

    /// Why this deployment's images cannot run again, or nil when they can: an app that builds
    /// needs every service's pushed image (one that failed or was cancelled before its push has none).
    public func whyNotRedeployable(type: AppType) -> String? {
        guard type.isBuilt else { return nil }
        let missing = DeploymentPlan.services(in: config).filter { image(of: $0) == nil }
        guard !missing.isEmpty else { return nil }
        return "it has no pushed image for \(missing.joined(separator: ", ")) (it is \(state.rawValue) and never got that far)"
    }

    /// The digest of an image reference `HOST/REPOSITORY@DIGEST`.
    public static func digest(of reference: String) -> String? {
        reference.range(of: "@").map { String(reference[$0.upperBound...]) }
    }

    /// The services whose image has one of `digests`, by name.
    public func services(runningAnyOf digests: Set<String>) -> [String] {
        DeploymentPlan.services(in: config).filter { service in
            image(of: service).flatMap(Self.digest(of:)).map(digests.contains) ?? false
        }
    }

    /// Every image digest the deployment names.
    public var imageDigests: [String] {
        Array(Set(images.values.compactMap(Self.digest(of:)) + (imageDigest.map { [$0] } ?? []))).sorted()
    }
}

/// One entry of a deployment's append-only event log; `id` increases strictly per deployment.
public struct DeploymentEvent: Sendable, Codable, Equatable {
    public var id: Int64
    public var deploymentID: Int64
    public var at: Date
    public var type: String
    public var stage: String?
    public var message: String
    public var data: JSONValue?

    enum CodingKeys: String, CodingKey {
        case id, deploymentID = "deployment_id", at, type, stage, message, data
    }
}

