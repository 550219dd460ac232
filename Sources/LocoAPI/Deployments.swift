import Foundation
import HTTPTypes
import Hummingbird
import LocoConfig
import LocoCore
import LocoQueue
import NIOCore
import Prometheus

extension HTTPField.Name {
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
}

extension API {
    static let maxConfigBytes = 256 * 1024

    /// `POST /v1/apps/{app}/deployments`: multipart/form-data with a `config` part (loco.toml as
    /// JSON) and a `context` part (gzip'd tar, streamed to the context store while it is checked).
    func submitDeployment(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (principal, access) = try await app(request, context, for: .deploy)
        let contentType = request.headers[.contentType] ?? ""
        guard let boundary = MultipartReader.boundary(contentType: contentType) else {
            throw CoreError.unsupportedMediaType(got: contentType.isEmpty ? "(none)" : contentType, expected: "multipart/form-data with a boundary")
        }
        let queueBehind = request.query("queue") == "true" || request.query("queue") == "1"
        let (config, staged) = try await readDeploymentUpload(request.body, boundary: boundary, app: access.app.name)
        // Placed by the submit, or not needed: either way the upload's own file goes.
        defer { staged?.discard() }
        if access.app.type.isBuilt && staged == nil {
            throw CoreError.invalidUpload(reason: "a \(access.app.type.rawValue) app needs a 'context' part with its build context")
        }
        do {
            let deployment = try await store.submit(
                DeploymentRequest(app: access.app, config: config, context: staged, createdBy: principal.user?.id, queueBehind: queueBehind),
                on: database)
            metrics.deploymentsSubmitted.increment()
            var response = jsonResponse(deployment, status: .created)
            response.headers[.location] = "/v1/deployments/\(deployment.id)"
            return response
        } catch {
            // The submit may have placed the file before it failed.
            if let staged { _ = try? await store.removeContexts([staged.digest], from: contexts, on: database) }
            throw error
        }
    }

    /// Reads the multipart body; the context goes straight to disk. Nothing is left behind on error.
    func readDeploymentUpload(_ body: RequestBody, boundary: String, app: String) async throws -> (JSONValue, StagedContext?) {
        var reader = MultipartReader(boundary: boundary)
        var configBytes: [UInt8] = []
        var sawConfig = false
        var upload: ContextUpload?
        var staged: StagedContext?
        var current: String?
        do {
            for try await buffer in body {
                for event in try reader.feed(buffer.readableBytesView) {
                    switch event {
                    case .begin(let name, _):
                        switch name {
                        case "config":
                            guard !sawConfig else { throw CoreError.invalidUpload(reason: "more than one 'config' part") }
                            sawConfig = true
                        case "context":
                            guard upload == nil, staged == nil else { throw CoreError.invalidUpload(reason: "more than one 'context' part") }
                            upload = try contexts.begin()
                        default:
                            throw CoreError.invalidUpload(reason: "unknown part '\(name.prefix(40))'; expected 'config' and 'context'")
                        }
                        current = name
                    case .data(let bytes):
                        if current == "config" {
                            configBytes += bytes
                            if configBytes.count > Self.maxConfigBytes { throw CoreError.payloadTooLarge(limit: Int64(Self.maxConfigBytes)) }
                        } else {
                            try upload?.write(bytes)
                        }
                    case .end:
                        if current == "context", let finishing = upload {
                            upload = nil
                            staged = try finishing.finish()
                        }
                        current = nil
                    }
                }
            }
            guard reader.finished else { throw CoreError.invalidUpload(reason: "the body ends before the closing multipart boundary") }
            guard sawConfig else { throw CoreError.invalidUpload(reason: "the 'config' part is missing") }
            return (try Self.parseConfig(configBytes, app: app), staged)
        } catch {
            upload?.abandon()
            staged?.discard()
            throw error
        }
    }

    /// The deployed config: loco.toml as JSON, checked by the same rules as `loco validate`, and
    /// stored with every default filled in, so workers never guess.
    static func parseConfig(_ bytes: [UInt8], app: String) throws -> JSONValue {
        guard let config = try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)) else {
            throw CoreError.invalidJSON(reason: "the 'config' part does not parse")
        }
        guard case .object = config else { throw CoreError.invalidJSON(reason: "the 'config' part must be a JSON object") }
        if StorableText.mayHoldNUL(bytes), let parsed = try? JSONSerialization.jsonObject(with: Data(bytes)) {
            try StorableText.check(parsed, under: "config")
        }
        // The URL names the app; a config naming another would be stored under the wrong name.
        if let named = config["name"]?.stringValue, named != app {
            throw CoreError.invalidField(field: "config.name", reason: "\"\(named.prefix(80))\" is not this app (\(app))",
                                         hint: "Deploy to /v1/apps/\(named.prefix(80))/deployments, or set name = \"\(app)\" (loco deploy --app \(app) does).")
        }
        do {
            return try ConfigLoader.parse(json: config, defaultName: app).json
        } catch {
            let first = error.issues.first
            throw CoreError.invalidField(field: "config" + (first.map { $0.key.isEmpty ? "" : ".\($0.key)" } ?? ""),
                                         reason: error.issues.map(\.description).joined(separator: "; "),
                                         hint: error.kind == .tooNew ? error.hint : "Run 'loco validate' on the loco.toml; every problem is listed with what is allowed.")
        }
    }

    func listDeployments(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .readApp)
        let limit = try intQuery(request, "limit", default: 20, range: 1...200)
        let before = try request.query("before").map { text -> Int64 in
            guard let value = Int64(text), value > 0 else {
                throw CoreError.invalidField(field: "before", reason: "must be a deployment id", hint: "Pass the id of the oldest deployment you have.")
            }
            return value
        }
        return jsonResponse(ListOf(items: try await store.deployments(appID: access.app.id, limit: limit, before: before, on: database)))
    }

    func showDeployment(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, deployment, _) = try await deployment(request, context, for: .readApp)
        return jsonResponse(deployment)
    }

    /// `POST /v1/deployments/{id}/redeploy`: a new deployment of the same app that runs that
    /// deployment's pushed images and config again (a rollback), with the app's env as it is now.
    func redeployDeployment(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (principal, source, access) = try await deployment(request, context, for: .deploy)
        try await refuseIfPruned(source, app: access.app)
        let reason = try request.query("reason").map { text -> String in
            guard (1...120).contains(text.count), !text.unicodeScalars.contains(where: { CharacterSet.controlCharacters.contains($0) }) else {
                throw CoreError.invalidField(field: "reason", reason: "must be 1 to 120 characters, none of them control characters",
                                             hint: "Say why in a few words, e.g. reason=rollback%20to%2027.")
            }
            return text
        }
        let deployment = try await store.submit(
            try DeploymentRequest.redeploy(of: source, app: access.app, createdBy: principal.user?.id, queueBehind: Self.queueBehind(request), reason: reason),
            on: database)
        metrics.deploymentsSubmitted.increment()
        var response = jsonResponse(deployment, status: .created)
        response.headers[.location] = "/v1/deployments/\(deployment.id)"
        return response
    }

    /// A redeploy of images cleanup deleted from the registry would only fail at apply: refused now.
    func refuseIfPruned(_ source: Deployment, app: App) async throws {
        let pruned = try await store.prunedImages(appID: app.id, among: source.imageDigests, on: database)
        guard !pruned.isEmpty else { return }
        let services = source.services(runningAnyOf: pruned)
        throw CoreError.notRedeployable(deploymentID: source.id, reason: """
            cleanup has deleted its image for \(services.isEmpty ? "the app" : services.joined(separator: ", ")) from the registry \
            (it keeps the images of each app's last versions that served: 'locod worker --keep-images')
            """)
    }

    func cancelDeployment(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, deployment, _) = try await deployment(request, context, for: .cancelDeployment)
        let (cancelled, released) = try await store.cancel(deploymentID: deployment.id, on: database)
        _ = try? await store.removeContexts(released, from: contexts, on: database)
        return jsonResponse(cancelled)
    }

    /// `GET /v1/deployments/{id}/events`: Server-Sent Events. Each event's `id` is its sequence
    /// number; a client that reconnects with `Last-Event-ID: N` gets every event after N once, in
    /// order. When the deployment has ended and every event is sent, a final `end` event closes it.
    func deploymentEvents(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, deployment, _) = try await deployment(request, context, for: .readApp)
        let resumeText = request.headers[.lastEventID] ?? request.query("after") ?? "0"
        guard let resume = Int64(resumeText.trimmingCharacters(in: .whitespaces)), resume >= 0 else {
            throw CoreError.invalidField(field: "Last-Event-ID", reason: "must be an event id (a number)", hint: "Send back the last 'id:' you received.")
        }
        let store = self.store, database = self.database, interval = eventPollInterval
        let id = deployment.id
        let body = ResponseBody { writer in
            var after = resume
            func send(_ events: [DeploymentEvent]) async throws {
                for event in events {
                    try await writer.write(ByteBuffer(string: "id: \(event.id)\nevent: \(event.type)\ndata: \(CoreJSON.encode(event))\n\n"))
                    after = event.id
                }
            }
            var quiet = ContinuousClock.now
            while !Task.isCancelled {
                let events = try await store.events(deploymentID: id, after: after, on: database)
                try await send(events)
                if !events.isEmpty { quiet = ContinuousClock.now; continue }
                // The final state and its event commit together, so once the state is final every
                // event is visible; one more read picks up any that landed since the last one.
                let state = try await store.deploymentState(id: id, on: database)
                if state?.isFinal ?? true {
                    try await send(try await store.events(deploymentID: id, after: after, on: database))
                    let end = #"{"deployment_id":\#(id),"state":"\#(state?.rawValue ?? "deleted")"}"#
                    try await writer.write(ByteBuffer(string: "event: end\ndata: \(end)\n\n"))
                    break
                }
                if ContinuousClock.now - quiet > .seconds(15) {
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                    quiet = ContinuousClock.now
                }
                try await Task.sleep(for: interval)
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
                        body: body)
    }

    func intQuery(_ request: Request, _ name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = request.query(name) else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw CoreError.invalidField(field: name, reason: "must be a number from \(range.lowerBound) to \(range.upperBound)", hint: "For example ?\(name)=\(value).")
        }
        return number
    }
}
