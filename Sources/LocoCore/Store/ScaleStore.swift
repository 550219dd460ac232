import Foundation
import LocoConfig
import LocoQueue
import LocoShared
import PostgresNIO

/// A change of an app's replica counts (`loco scale`), written in the same transaction as the
/// deployment that rolls it out.
public enum ScaleChange: Sendable, Equatable {
    /// Run `replicas` of `service` from now on, whatever loco.toml says.
    case set(service: String, replicas: Int)
    /// Back to loco.toml's `min_replicas`: one service, or all (`nil`).
    case reset(service: String?)

    public static let replicaRange = 1...100

    public static func checkReplicas(_ replicas: Int) throws {
        guard replicaRange.contains(replicas) else {
            throw CoreError.invalidField(field: "replicas", reason: "\(replicas) is out of range",
                                         hint: "Use a whole number from \(replicaRange.lowerBound) to \(replicaRange.upperBound); 'loco destroy' removes an app.")
        }
    }

    /// For the deployment's first event: "scaling web to 3 replicas".
    public var description: String {
        switch self {
        case .set(let service, let replicas): "scaling \(service) to \(replicas) replica\(replicas == 1 ? "" : "s")"
        case .reset(let service): "scaling \(service ?? "every service") back to loco.toml's min_replicas"
        }
    }
}

/// One service's replica count as `GET /v1/apps/{app}/scale` shows it.
public struct ServiceScale: Sendable, Codable, Equatable {
    public var service: String
    /// What the app's next rollout runs.
    public var replicas: Int
    /// `loco scale` when a count was set for the service, else `loco.toml`.
    public var source: String
    /// loco.toml's `min_replicas` in the serving version's config (at least 1); nil if nothing serves.
    public var minReplicas: Int?
    /// What the serving version runs now; nil if nothing serves.
    public var running: Int?

    enum CodingKeys: String, CodingKey {
        case service, replicas, source, minReplicas = "min_replicas", running
    }

    /// Each service of `config` (the serving version's, if any) with the counts set on top; a
    /// count set for a service the config does not have (yet) is listed too.
    public static func list(config: JSONValue?, app: String, scaled: [String: Int], running: [String: Int]?) -> [ServiceScale] {
        var result: [ServiceScale] = []
        let services = config.flatMap { try? ConfigLoader.parse(json: $0, defaultName: app) }?.effectiveServices ?? []
        for service in services {
            let fromConfig = max(1, service.resources.minReplicas)
            result.append(ServiceScale(service: service.name, replicas: scaled[service.name] ?? fromConfig,
                                       source: scaled[service.name] == nil ? "loco.toml" : "loco scale", minReplicas: fromConfig,
                                       running: running?[service.name] ?? (running == nil ? nil : fromConfig)))
        }
        for (service, replicas) in scaled.sorted(by: { $0.key < $1.key }) where !services.contains(where: { $0.name == service }) {
            result.append(ServiceScale(service: service, replicas: replicas, source: "loco scale", minReplicas: nil, running: nil))
        }
        return result
    }
}

extension CoreStore {
    /// The counts `loco scale` set for the app's services.
    public func scale(appID: Int64, on db: some QueryRunner) async throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for try await (service, replicas) in try await db.run("SELECT service, replicas FROM loco_app_scale WHERE app_id = \(appID)",
                                                                logger: logger).decode((String, Int32).self) {
            counts[service] = Int(replicas)
        }
        return counts
    }

    /// Writes a change; returns the services whose count it set or removed.
    @discardableResult
    public func applyScale(_ change: ScaleChange, appID: Int64, on db: some QueryRunner) async throws -> [String] {
        switch change {
        case .set(let service, let replicas):
            try ScaleChange.checkReplicas(replicas)
            try await execute("""
                INSERT INTO loco_app_scale (app_id, service, replicas) VALUES (\(appID), \(service), \(Int32(replicas)))
                ON CONFLICT (app_id, service) DO UPDATE SET replicas = EXCLUDED.replicas, updated_at = now()
                """, on: db)
            return [service]
        case .reset(let service):
            var removed: [String] = []
            for try await name in try await db.run("""
                DELETE FROM loco_app_scale WHERE app_id = \(appID) AND (\(service)::text IS NULL OR service = \(service)::text) RETURNING service
                """, logger: logger).decode(String.self) {
                removed.append(name)
            }
            return removed.sorted()
        }
    }

    /// Fixes the counts a deployment runs the first time its apply stage asks, and returns the
    /// fixed ones after: an apply run again, and the wait stage, see the same counts.
    public func fixReplicas(deploymentID: Int64, _ counts: [String: Int], on db: some QueryRunner) async throws -> [String: Int] {
        let proposed = JSONValue.object(counts.mapValues { .number(Double($0)) }).jsonText
        guard let text = try await scalar("""
            UPDATE loco_deployments SET replicas = coalesce(replicas, \(proposed)::jsonb) WHERE id = \(deploymentID) RETURNING replicas::text
            """, as: String.self, on: db),
              let fixed = try? JSONDecoder().decode([String: Int].self, from: Data(text.utf8)) else { return counts }
        return fixed
    }
}
