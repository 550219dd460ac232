import Foundation
import LocoShared
import LocoQueue
import PostgresNIO

/// A new deployment, as the API received it.
public struct DeploymentRequest: Sendable {
    public var app: App
    public var config: JSONValue
    /// The uploaded build context; `submit` places it while it writes the deployment.
    public var context: StagedContext?
    public var createdBy: Int64?
    /// Wait behind the app's current deployment instead of refusing.
    public var queueBehind: Bool
    /// A redeploy: run this deployment's pushed images again with its config (no context, no build).
    public var redeployOf: Deployment?
    /// A `loco scale` change this deployment rolls out: written in its transaction, so a refused
    /// deployment changes nothing.
    public var scaleChange: ScaleChange?
    /// Why, for the history (a deploy has none).
    public var reason: String?

    public init(app: App, config: JSONValue, context: StagedContext?, createdBy: Int64?, queueBehind: Bool, redeployOf: Deployment? = nil) {
        self.app = app
        self.config = config
        self.context = context
        self.createdBy = createdBy
        self.queueBehind = queueBehind
        self.redeployOf = redeployOf
    }

    /// Deployment `source` again, as it was built: its config and images, the app's env as it is now.
    public static func redeploy(of source: Deployment, app: App, createdBy: Int64?, queueBehind: Bool, scaleChange: ScaleChange? = nil,
                                reason: String? = nil) throws -> DeploymentRequest {
        if let why = source.whyNotRedeployable(type: app.type) { throw CoreError.notRedeployable(deploymentID: source.id, reason: why) }
        var request = DeploymentRequest(app: app, config: source.config, context: nil, createdBy: createdBy, queueBehind: queueBehind, redeployOf: source)
        request.scaleChange = scaleChange
        request.reason = reason ?? scaleChange?.description
        return request
    }
}

/// An app's state at a glance: what serves, what is on its way, what failed last.
public struct AppStatus: Sendable, Codable, Equatable {
    public var app: App
    /// The deployment serving now.
    public var current: Deployment?
    /// The deployment in flight, if any.
    public var inFlight: Deployment?
    /// How many deployments wait in line behind it.
    public var waiting: Int
    /// The newest failed deployment since the serving one.
    public var lastFailure: Deployment?
    /// Replica counts `loco scale` set, by service (over loco.toml's `min_replicas`).
    public var scale: [String: Int]

    enum CodingKeys: String, CodingKey {
        case app, current, inFlight = "in_flight", waiting, lastFailure = "last_failure", scale
    }
}

extension CoreStore {
    static let deploymentFrom = "loco_deployments d JOIN loco_apps a ON a.id = d.app_id JOIN loco_teams t ON t.id = a.team_id"

    /// Creates a deployment and its whole job DAG in one transaction. A second deployment while one
    /// is in flight is refused with `deployment_in_progress`, or waits in line with `queueBehind`.
    public func submit(_ request: DeploymentRequest, on db: some TransactionRunner & QueryRunner) async throws -> Deployment {
        do {
            return try await db.transaction { connection in
                // Submits for one app take turns here, so "is one in flight?" cannot race.
                try await execute("SELECT id FROM loco_apps WHERE id = \(request.app.id) FOR UPDATE", on: connection)
                let running = try await inFlight(appID: request.app.id, on: connection)
                if let running, !request.queueBehind {
                    throw CoreError.deploymentInProgress(app: request.app.name, deploymentID: running.id, state: running.state.rawValue)
                }
                let behind: Int64? = running == nil ? nil
                    : try await scalar("SELECT max(id) FROM loco_deployments WHERE app_id = \(request.app.id) AND state = ANY(\(DeploymentState.inFlight.map(\.rawValue))::text[])",
                                       as: Int64?.self, on: connection) ?? nil
                if let context = request.context {
                    // Shared: submits of one context do not wait on each other, only on a removal.
                    try await execute("SELECT pg_advisory_xact_lock_shared(\(Self.contextLockClass), hashtext(\(context.digest)))", on: connection)
                    try context.place()
                }
                let source = request.redeployOf
                let images = JSONValue.object((source?.images ?? [:]).mapValues(JSONValue.string)).storableText
                let id = try await scalar("""
                    INSERT INTO loco_deployments (app_id, state, in_line, queued_behind, created_by, config, context_digest, context_bytes,
                                                  redeploy_of, image_digest, image_ref, images, reason)
                    VALUES (\(request.app.id), 'queued', \(behind != nil), \(behind), \(request.createdBy), \(request.config.storableText)::jsonb,
                            \(request.context?.digest), \(request.context?.bytes),
                            \(source?.id), \(source?.imageDigest), \(source?.imageRef), \(images)::jsonb, \(request.reason))
                    RETURNING id
                    """, as: Int64.self, on: connection)!
                if let change = request.scaleChange { try await applyScale(change, appID: request.app.id, on: connection) }
                let redeploying = (source.map { " (deployment \($0.id)'s images again, no build)" } ?? "")
                    + (request.scaleChange.map { ", \($0.description)" } ?? "")
                if let behind {
                    try await appendEvent(deploymentID: id, type: "queued", stage: nil, message: "waiting in line behind deployment \(behind)\(redeploying)", on: connection)
                } else {
                    try await enqueuePlan(deploymentID: id, type: request.app.type, config: request.config, prebuilt: source != nil, on: connection)
                    try await appendEvent(deploymentID: id, type: "queued", stage: nil, message: "deployment \(id) of \(request.app.name) is queued\(redeploying)", on: connection)
                }
                return try await deployment(id: id, on: connection)!
            }
        } catch where isUniqueViolation(error, constraint: "loco_deployments_one_in_flight") {
            let running = try await inFlight(appID: request.app.id, on: db)
            throw CoreError.deploymentInProgress(app: request.app.name, deploymentID: running?.id ?? 0, state: running?.state.rawValue ?? "queued")
        }
    }

    /// The app's deployment in flight (not those waiting in line behind it).
    public func inFlight(appID: Int64, on db: some QueryRunner) async throws -> Deployment? {
        try await document("""
            SELECT \(unescaped: Projection.deployment) FROM \(unescaped: Self.deploymentFrom)
            WHERE d.app_id = \(appID) AND NOT d.in_line AND d.state = ANY(\(DeploymentState.inFlight.map(\.rawValue))::text[])
            ORDER BY d.id LIMIT 1
            """, as: Deployment.self, on: db)
    }

    public func deployment(id: Int64, on db: some QueryRunner) async throws -> Deployment? {
        try await document("SELECT \(unescaped: Projection.deployment) FROM \(unescaped: Self.deploymentFrom) WHERE d.id = \(id)",
                           as: Deployment.self, on: db)
    }

    /// Just the state: what an event stream checks between reads (`nil`: the deployment is gone).
    public func deploymentState(id: Int64, on db: some QueryRunner) async throws -> DeploymentState? {
        try await scalar("SELECT state FROM loco_deployments WHERE id = \(id)", as: String.self, on: db).flatMap(DeploymentState.init(rawValue:))
    }

    /// Newest first; `before` pages back.
    public func deployments(appID: Int64, limit: Int, before: Int64?, on db: some QueryRunner) async throws -> [Deployment] {
        try await documents("""
            SELECT \(unescaped: Projection.deployment) FROM \(unescaped: Self.deploymentFrom)
            WHERE d.app_id = \(appID) AND (\(before)::int8 IS NULL OR d.id < \(before)::int8)
            ORDER BY d.id DESC LIMIT \(Int64(limit))
            """, as: Deployment.self, on: db)
    }

    /// The app's status as a model: the same document the API serves, decoded.
    public func status(app: App, on db: some QueryRunner) async throws -> AppStatus {
        guard let json = try await statusDocument(appID: app.id, on: db) else { throw CoreError.notFound(what: "app", name: app.name) }
        return try CoreJSON.decoder.decode(AppStatus.self, from: Data(json.utf8))
    }

    /// The app's status as the API returns it, built by the database in one round trip, with the
    /// caller's role: the hot read path (`GET /v1/apps/{app}/status`). One row per matching app of
    /// the user's teams (several rows: the name is ambiguous; none: not found).
    public func statusDocuments(app name: String, team: String?, userID: Int64, on db: some QueryRunner) async throws -> [(role: Role, isOwner: Bool, json: String)] {
        let rows = try await db.prepared(CoreStatements.StatusByName(app: name, team: team, userID: userID), logger: logger)
        var result: [(Role, Bool, String)] = []
        for (role, isOwner, json) in rows {
            result.append((Role(rawValue: role) ?? .viewer, isOwner, json))
        }
        return result
    }

    /// The same document for an app reached by id (deploy tokens).
    public func statusDocument(appID: Int64, on db: some QueryRunner) async throws -> String? {
        try await scalar("""
            SELECT \(unescaped: Self.statusDocument) FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id WHERE a.id = \(appID)
            """, as: String.self, on: db)
    }

    /// `AppStatus` as JSON, over `a` (loco_apps) and `t` (loco_teams).
    static let statusDocument = """
        jsonb_build_object(
            'app', \(Projection.app.replacingOccurrences(of: "::text", with: "")),
            'current', (SELECT \(Projection.deployment.replacingOccurrences(of: "::text", with: "")) FROM loco_deployments d
                        WHERE d.app_id = a.id AND d.state = 'succeeded' ORDER BY d.id DESC LIMIT 1),
            'in_flight', (SELECT \(Projection.deployment.replacingOccurrences(of: "::text", with: "")) FROM loco_deployments d
                          WHERE d.app_id = a.id AND NOT d.in_line AND d.state IN ('queued','building','pushing','applying','waiting')
                          ORDER BY d.id LIMIT 1),
            'waiting', (SELECT count(*) FROM loco_deployments d WHERE d.app_id = a.id AND d.in_line AND d.state = 'queued'),
            'scale', coalesce((SELECT jsonb_object_agg(s.service, s.replicas) FROM loco_app_scale s WHERE s.app_id = a.id), '{}'::jsonb),
            'last_failure', (SELECT \(Projection.deployment.replacingOccurrences(of: "::text", with: "")) FROM loco_deployments d
                             WHERE d.app_id = a.id AND d.state = 'failed'
                               AND d.id > coalesce((SELECT max(s.id) FROM loco_deployments s WHERE s.app_id = a.id AND s.state = 'succeeded'), 0)
                             ORDER BY d.id DESC LIMIT 1)
        )::text
        """

    /// Events after `after`, oldest first.
    public func events(deploymentID: Int64, after: Int64, limit: Int = 500, on db: some QueryRunner) async throws -> [DeploymentEvent] {
        try await documents("""
            SELECT \(unescaped: Projection.event) FROM loco_deployment_events e
            WHERE e.deployment_id = \(deploymentID) AND e.id > \(after) ORDER BY e.id LIMIT \(Int64(limit))
            """, as: DeploymentEvent.self, on: db)
    }

    /// Appends an event. Ids come from a counter on the deployment row, taken under its row lock,
    /// so they increase strictly in commit order: a reader resuming after id N never misses one.
    @discardableResult
    public func appendEvent(deploymentID: Int64, type: String, stage: String?, message: String, data: JSONValue? = nil,
                            on connection: PostgresConnection) async throws -> Int64 {
        let id = try await scalar("""
            WITH seq AS (UPDATE loco_deployments SET event_seq = event_seq + 1 WHERE id = \(deploymentID) RETURNING event_seq)
            INSERT INTO loco_deployment_events (deployment_id, id, type, stage, message, data)
            SELECT \(deploymentID), event_seq, \(type), \(stage), \(Storable.text(String(message.prefix(64 * 1024)))), \(data?.storableText)::jsonb FROM seq
            RETURNING id
            """, as: Int64.self, on: connection)
        guard let id else { throw CoreError.notFound(what: "deployment", name: "\(deploymentID)") }
        return id
    }

    /// Appends several events of one type in one statement (build output), ids in order.
    public func appendEvents(deploymentID: Int64, type: String, stage: String?, messages: [String], data: JSONValue? = nil,
                             on connection: PostgresConnection) async throws {
        guard !messages.isEmpty else { return }
        let clipped = messages.map { Storable.text(String($0.prefix(8 * 1024))) }
        try await execute("""
            WITH seq AS (UPDATE loco_deployments SET event_seq = event_seq + \(Int64(clipped.count)) WHERE id = \(deploymentID) RETURNING event_seq)
            INSERT INTO loco_deployment_events (deployment_id, id, type, stage, message, data)
            SELECT \(deploymentID), seq.event_seq - \(Int64(clipped.count)) + m.n, \(type), \(stage), m.message, \(data?.storableText)::jsonb
            FROM seq, unnest(\(clipped)::text[]) WITH ORDINALITY AS m(message, n)
            """, on: connection)
    }

    /// Cancels a deployment: queued jobs stop at once, running ones are asked to stop, the next in
    /// line starts. Returns the deployment and the build contexts nothing needs any more.
    public func cancel(deploymentID: Int64, on db: some TransactionRunner) async throws -> (Deployment, [String]) {
        try await db.transaction { connection in
            guard let current = try await lockedState(deploymentID, on: connection) else {
                throw CoreError.notFound(what: "deployment", name: "\(deploymentID)")
            }
            if current.isFinal { throw CoreError.deploymentFinished(deploymentID: deploymentID, state: current.rawValue) }
            let released = try await end(deploymentID: deploymentID, as: .cancelled, report: nil,
                                         message: "deployment \(deploymentID) was cancelled", on: connection)
            return (try await deployment(id: deploymentID, on: connection)!, released)
        }
    }

    func lockedState(_ deploymentID: Int64, on connection: PostgresConnection) async throws -> DeploymentState? {
        let state = try await scalar("SELECT state FROM loco_deployments WHERE id = \(deploymentID) FOR UPDATE", as: String.self, on: connection)
        return state.flatMap(DeploymentState.init(rawValue:))
    }
}
