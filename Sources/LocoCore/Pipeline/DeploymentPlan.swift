import Foundation
import LocoQueue
import PostgresNIO

/// What every deploy job carries: which deployment, and for build and push, which service.
public struct DeploymentJobArgs: Codable, Sendable, Equatable {
    public var deploymentID: Int64
    public var service: String?
    /// For cleanup: how the deployment ended (`succeeded`, `failed`, `cancelled`).
    public var outcome: String?

    public init(deploymentID: Int64, service: String? = nil, outcome: String? = nil) {
        self.deploymentID = deploymentID
        self.service = service
        self.outcome = outcome
    }

    enum CodingKeys: String, CodingKey {
        case deploymentID = "deployment_id", service, outcome
    }
}

/// The job DAG of one deployment (DESIGN.md §5):
///
///     build(svc…) → push(svc…) → apply → wait → cleanup(success)
///
/// One build/push pair per service; app types without a Dockerfile skip both. A failed or
/// cancelled deployment gets its cleanup job when it ends (see `DeploymentProgress`).
public enum DeploymentPlan {
    /// How many attempts each stage gets before its failure is final.
    public static func maxAttempts(_ stage: Stage) -> Int {
        switch stage {
        // Five: a build that fails for the Dockerfile fails at once (permanent), so the attempts
        // are for the builder's own trouble; with 20 apps deployed at once on 2 build slots,
        // one app's build met the shared image storage busy three times running (a CI run).
        case .build: 5
        case .push: 5
        case .apply: 5
        case .wait: 2
        case .cleanup: 10
        }
    }

    /// The services named in the deployed config (`[[services]]`), or the one default service.
    public static func services(in config: JSONValue) -> [String] {
        guard case .array(let list)? = config["services"] else { return ["web"] }
        let names = list.compactMap { $0["name"]?.stringValue }
        return names.isEmpty ? ["web"] : names
    }

    /// A job for one stage of one deployment.
    static func job(_ stage: Stage, deploymentID: Int64, service: String? = nil, outcome: String? = nil, after parents: [Int64]) throws -> NewJob {
        let args = DeploymentJobArgs(deploymentID: deploymentID, service: service, outcome: outcome)
        let data = try JSONEncoder().encode(args)
        var key = "deployment:\(deploymentID):\(stage.rawValue)"
        if let service { key += ":\(service)" }
        if let outcome { key += ":\(outcome)" }
        return NewJob(queue: stage.queue, kind: stage.jobKind, args: String(decoding: data, as: UTF8.self),
                      maxAttempts: maxAttempts(stage), uniqueKey: key, dependsOn: parents)
    }
}

extension CoreStore {
    /// Enqueues a deployment's whole DAG on `connection` (the caller's transaction) and records
    /// which job is which stage. A `prebuilt` one (a redeploy) has its images already: no build, no push.
    func enqueuePlan(deploymentID: Int64, type: AppType, config: JSONValue, prebuilt: Bool, on connection: PostgresConnection) async throws {
        var recorded: [(Int64, Stage, String?)] = []
        func add(_ stage: Stage, service: String? = nil, outcome: String? = nil, after parents: [Int64]) async throws -> Int64 {
            let job = try DeploymentPlan.job(stage, deploymentID: deploymentID, service: service, outcome: outcome, after: parents)
            let id = try await jobs.enqueue(job, on: connection).id
            recorded.append((id, stage, service))
            return id
        }
        var pushes: [Int64] = []
        if type.isBuilt && !prebuilt {
            for service in DeploymentPlan.services(in: config) {
                let build = try await add(.build, service: service, after: [])
                pushes.append(try await add(.push, service: service, after: [build]))
            }
        }
        let apply = try await add(.apply, after: pushes)
        let wait = try await add(.wait, after: [apply])
        _ = try await add(.cleanup, outcome: "succeeded", after: [wait])
        try await recordJobs(deploymentID: deploymentID, recorded, on: connection)
    }

    func recordJobs(deploymentID: Int64, _ recorded: [(Int64, Stage, String?)], on connection: PostgresConnection) async throws {
        let ids = recorded.map(\.0)
        let stages = recorded.map(\.1.rawValue)
        let services = recorded.map { $0.2 ?? "" }
        try await execute("""
            INSERT INTO loco_deployment_jobs (deployment_id, job_id, stage, service)
            SELECT \(deploymentID), j, s, nullif(v, '') FROM unnest(\(ids)::int8[], \(stages)::text[], \(services)::text[]) AS x(j, s, v)
            """, on: connection)
    }
}
