import Foundation
import Hummingbird
import LocoCore
import LocoShared
import Prometheus

struct ScaleBody: StrictBody {
    static let fields = ["service", "replicas"]
    static let required = ["replicas"]
    var service: String?
    var replicas: Int
}

/// What a scale change did: each service's counts after it, and the deployment that rolls it out
/// (none when nothing serves yet, or when the serving version already runs that many).
struct ScaleAnswer: Encodable {
    var items: [ServiceScale]
    var deployment: Deployment?
}

/// `loco scale`, as `heroku ps:scale` and `fly scale count`: a replica count per service that
/// every later rollout keeps until it is reset. A change to a serving app rolls out at once as a
/// new deployment of the serving version (no build), like `loco restart`.
extension API {
    /// `GET /v1/apps/{app}/scale`
    func showScale(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .readApp)
        let status = try await store.status(app: access.app, on: database)
        return jsonResponse(ListOf(items: Self.scaleItems(status)))
    }

    /// `PUT /v1/apps/{app}/scale` with `{"service": "web", "replicas": 3}`.
    func setScale(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (principal, access) = try await app(request, context, for: .deploy)
        let body = try await RequestReader.json(ScaleBody.self, from: request)
        try ScaleChange.checkReplicas(body.replicas)
        let status = try await store.status(app: access.app, on: database)
        let service = try Self.scaledService(body.service, status: status)
        let change = ScaleChange.set(service: service, replicas: body.replicas)
        // Rolled out only when it changes what the serving version runs.
        let serving = Self.scaleItems(status).first { $0.service == service }?.running
        return try await rollOut(change, status: status, needed: serving != nil && serving != body.replicas,
                                 queueBehind: Self.queueBehind(request), createdBy: principal.user?.id)
    }

    /// `DELETE /v1/apps/{app}/scale[?service=web]`: back to loco.toml's `min_replicas`.
    func resetScale(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (principal, access) = try await app(request, context, for: .deploy)
        let status = try await store.status(app: access.app, on: database)
        let service = try request.query("service").map { try Self.scaledService($0, status: status) }
        let items = Self.scaleItems(status).filter { item in service.map { $0 == item.service } ?? true }
        let needed = items.contains { item in item.running.map { $0 != item.minReplicas } ?? false }
        return try await rollOut(.reset(service: service), status: status, needed: needed,
                                 queueBehind: Self.queueBehind(request), createdBy: principal.user?.id)
    }

    /// Writes the change, in the transaction of a new deployment of the serving version when it
    /// changes what serves (so a refused deployment changes nothing).
    private func rollOut(_ change: ScaleChange, status: AppStatus, needed: Bool, queueBehind: Bool, createdBy: Int64?) async throws -> Response {
        var deployment: Deployment?
        if needed, let serving = status.current {
            try await refuseIfPruned(serving, app: status.app)
            deployment = try await store.submit(
                try DeploymentRequest.redeploy(of: serving, app: status.app, createdBy: createdBy, queueBehind: queueBehind, scaleChange: change), on: database)
            metrics.deploymentsSubmitted.increment()
        } else {
            try await store.applyScale(change, appID: status.app.id, on: database)
        }
        let after = try await store.status(app: status.app, on: database)
        return jsonResponse(ScaleAnswer(items: Self.scaleItems(after), deployment: deployment))
    }

    static func scaleItems(_ status: AppStatus) -> [ServiceScale] {
        ServiceScale.list(config: status.current?.config, app: status.app.name, scaled: status.scale,
                          running: status.current.map { $0.replicas ?? [:] })
    }

    /// The service a change is about: the one named, which the serving version must have; or,
    /// unnamed, its only one ("web" for an app that serves nothing yet).
    static func scaledService(_ name: String?, status: AppStatus) throws -> String {
        let services = status.current.map { DeploymentPlan.services(in: $0.config) } ?? []
        guard let name else {
            if services.count > 1 {
                throw CoreError.invalidField(field: "service", reason: "\(status.app.name) has several services",
                                             hint: "Name one: \(services.joined(separator: ", ")) ('loco scale count N --service NAME').")
            }
            return services.first ?? "web"
        }
        try checkService(name, of: status.app.name, known: services)
        return name
    }

    static func queueBehind(_ request: Request) -> Bool {
        request.query("queue") == "true" || request.query("queue") == "1"
    }
}
