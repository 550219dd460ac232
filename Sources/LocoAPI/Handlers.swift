import Foundation
import HTTPTypes
import Hummingbird
import LocoCore
import LocoQueue
import NIOCore

struct NewTeamBody: StrictBody {
    static let fields = ["name"]
    static let required = ["name"]
    var name: String
}

struct MemberBody: StrictBody {
    static let fields = ["role"]
    static let required = ["role"]
    var role: String
}

struct NewAppBody: StrictBody {
    static let fields = ["name", "team", "type"]
    static let required = ["name"]
    var name: String
    var team: String?
    var type: String?
}

struct EnvBody: StrictBody {
    static let fields = ["vars"]
    static let required = ["vars"]
    var vars: [String: String]
}

struct NewTokenBody: StrictBody {
    static let fields = ["kind", "name", "app", "team", "expires_in"]
    static let required = ["name"]
    var kind: String?
    var name: String
    var app: String?
    var team: String?
    var expiresIn: Int64?

    enum CodingKeys: String, CodingKey {
        case kind, name, app, team, expiresIn = "expires_in"
    }
}

struct WhoAmI: Encodable {
    var user: User?
    var tokenKind: String
    var teams: [TeamMembership]
    /// The one app a deploy token or pull credential is for.
    var app: App?
    var worker: String?

    enum CodingKeys: String, CodingKey {
        case user, tokenKind = "token_kind", teams, app, worker
    }
}

struct TeamView: Encodable {
    var team: Team
    var role: Role
}

struct ListOf<T: Encodable>: Encodable {
    var items: [T]
}

extension Optional {
    func asyncMap<T>(_ transform: (Wrapped) async throws -> T) async rethrows -> T? {
        guard let value = self else { return nil }
        return try await transform(value)
    }
}

func parseRole(_ text: String) throws -> Role {
    guard let role = Role(rawValue: text) else {
        throw CoreError.invalidField(field: "role", reason: "'\(text.prefix(40))' is not a role",
                                     hint: "Use one of: \(Role.allCases.map(\.rawValue).joined(separator: ", ")).")
    }
    return role
}

extension API {
    func whoami(_ request: Request) async throws -> Response {
        let principal = try await principal(request)
        // Every kind of token may ask who it is; only a person's token lists their teams.
        var teams: [TeamMembership] = []
        if principal.kind == .personal, let user = principal.user { teams = try await store.teams(forUser: user.id, on: database) }
        let app = try await principal.appID.asyncMap { try await store.app(id: $0, on: database) } ?? nil
        return jsonResponse(WhoAmI(user: principal.kind == .personal || principal.kind == .deploy ? principal.user : nil,
                                   tokenKind: principal.kind.rawValue, teams: teams, app: app, worker: principal.workerName))
    }

    // MARK: teams and members

    func listTeams(_ request: Request) async throws -> Response {
        let (_, user) = try await person(request)
        return jsonResponse(ListOf(items: try await store.teams(forUser: user.id, on: database)))
    }

    func createTeam(_ request: Request) async throws -> Response {
        let (_, user) = try await person(request)
        let body = try await RequestReader.json(NewTeamBody.self, from: request)
        let team = try await store.createTeam(name: body.name, ownerID: user.id, on: database)
        return jsonResponse(TeamView(team: team, role: .owner), status: .created)
    }

    /// The team in the path, if the caller is a member allowed to do `action`.
    func team(_ request: Request, _ context: BasicRequestContext, for action: Action) async throws -> (User, TeamMembership) {
        let (_, user) = try await person(request)
        let membership = try await store.membership(team: try context.parameters.require("team"), userID: user.id, on: database)
        guard Permissions.allows(action, role: membership.role) else {
            throw CoreError.forbidden(action: action.rawValue, role: membership.role.rawValue)
        }
        return (user, membership)
    }

    func showTeam(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, membership) = try await team(request, context, for: .readTeam)
        return jsonResponse(TeamView(team: membership.team, role: membership.role))
    }

    func listMembers(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, membership) = try await team(request, context, for: .readTeam)
        return jsonResponse(ListOf(items: try await store.members(teamID: membership.team.id, on: database)))
    }

    func setMember(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, membership) = try await team(request, context, for: .manageMembers)
        let body = try await RequestReader.json(MemberBody.self, from: request)
        let role = try parseRole(body.role)
        let email = try context.parameters.require("email")
        guard let member = try await store.user(email: email, on: database) else { throw CoreError.notFound(what: "user", name: email) }
        let current = try await store.members(teamID: membership.team.id, on: database).first { $0.userID == member.id }
        // Only owners make or unmake owners.
        if (role == .owner || current?.role == .owner) && membership.role != .owner {
            throw CoreError.forbidden(action: "grant or take away the owner role", role: membership.role.rawValue)
        }
        try await store.setMember(teamID: membership.team.id, teamName: membership.team.name, userID: member.id, role: role, on: database)
        let members = try await store.members(teamID: membership.team.id, on: database)
        return jsonResponse(members.first { $0.userID == member.id }, status: current == nil ? .created : .ok)
    }

    func removeMember(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, membership) = try await team(request, context, for: .manageMembers)
        let email = try context.parameters.require("email")
        let members = try await store.members(teamID: membership.team.id, on: database)
        guard let member = members.first(where: { $0.email == email.lowercased() }) else { throw CoreError.notFound(what: "member", name: email) }
        if member.role == .owner && membership.role != .owner {
            throw CoreError.forbidden(action: "remove an owner", role: membership.role.rawValue)
        }
        try await store.removeMember(teamID: membership.team.id, teamName: membership.team.name, userID: member.userID, on: database)
        return emptyResponse()
    }

    // MARK: apps

    func listApps(_ request: Request) async throws -> Response {
        let (_, user) = try await person(request)
        return jsonResponse(ListOf(items: try await store.apps(forUser: user.id, team: request.query("team"), on: database)))
    }

    func createApp(_ request: Request) async throws -> Response {
        let (_, user) = try await person(request)
        let body = try await RequestReader.json(NewAppBody.self, from: request)
        let teams = try await store.teams(forUser: user.id, on: database)
        let membership: TeamMembership
        if let name = body.team {
            guard let found = teams.first(where: { $0.team.name == name }) else { throw CoreError.notFound(what: "team", name: name) }
            membership = found
        } else if teams.count == 1 {
            membership = teams[0]
        } else {
            throw CoreError.missingField(field: "team")
        }
        guard Permissions.allows(.createApp, role: membership.role) else {
            throw CoreError.forbidden(action: Action.createApp.rawValue, role: membership.role.rawValue)
        }
        let typeText = body.type ?? "service"
        guard let type = AppType(rawValue: typeText) else {
            throw CoreError.invalidField(field: "type", reason: "'\(typeText.prefix(40))' is not an app type",
                                         hint: "Use one of: \(AppType.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        let app = try await store.createApp(teamID: membership.team.id, name: body.name, type: type, ownerID: user.id, on: database)
        return jsonResponse(app, status: .created)
    }

    func showApp(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .readApp)
        return jsonResponse(access.app)
    }

    func deleteApp(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .deleteApp)
        let released = try await store.deleteApp(id: access.app.id, on: database)
        _ = try? await store.removeContexts(released, from: contexts, on: database)
        return emptyResponse()
    }

    /// The hot read: access check and the whole document in one query, passed through as the
    /// database rendered it.
    func appStatus(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let principal = try await principal(request)
        let name = try context.parameters.require("app")
        let json: String
        if principal.kind == .personal, let user = principal.user {
            let found = try await store.statusDocuments(app: name, team: request.query("team"), userID: user.id, on: database)
            guard let first = found.first else { throw CoreError.notFound(what: "app", name: name) }
            if found.count > 1 {
                throw CoreError.ambiguousApp(name: name, teams: found.compactMap { JSONValue.parse($0.json)?["app"]?["team"]?.stringValue }.sorted())
            }
            guard Permissions.allows(.readApp, role: first.role, isAppOwner: first.isOwner) else {
                throw CoreError.forbidden(action: Action.readApp.rawValue, role: first.role.rawValue)
            }
            json = first.json
        } else {
            let access = try await access(principal, app: .name(name, team: request.query("team")), for: .readApp)
            guard let document = try await store.statusDocument(appID: access.app.id, on: database) else { throw CoreError.notFound(what: "app", name: name) }
            json = document
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: json)))
    }

    /// `GET /v1/apps/{app}/instances`: every container of the app as the runtime sees it (state,
    /// restarts, last exit code), newest version first.
    func appInstances(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .readApp)
        guard let runtime else { throw CoreError.runtimeUnavailable }
        return jsonResponse(ListOf(items: try await runtime.instances(team: access.app.team, app: access.app.name)))
    }

    /// A service named in a request: a DNS label, and one of `known` (the serving version's
    /// services) when something serves.
    static func checkService(_ name: String, of app: String, known: [String]) throws {
        guard NameRules.isDNSLabel(name), known.isEmpty || known.contains(name) else {
            throw CoreError.invalidField(field: "service", reason: "'\(name.prefix(40))' is not a service of \(app)",
                                         hint: known.isEmpty ? "Use a service name from loco.toml's [[services]]." : "Its services: \(known.joined(separator: ", ")).")
        }
    }

    /// `GET /v1/apps/{app}/logs`: NDJSON, one `{at, service, deployment_id, replica, line}` per line
    /// (`source: "loco"` on Loco's own), oldest first; `follow` keeps the stream open, `since` (RFC
    /// 3339 or `10m`, `2h`, `1d`), `tail` (lines per container), `service` (one service's lines).
    func appLogs(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .readLogs)
        let follow = request.query("follow") == "true" || request.query("follow") == "1"
        let tail = try request.query("tail").map { text -> Int in
            guard let number = Int(text), (0...100_000).contains(number) else {
                throw CoreError.invalidField(field: "tail", reason: "must be a number from 0 to 100000", hint: "For example ?tail=100.")
            }
            return number
        }
        let since = try request.query("since").map { text -> Date in
            guard let date = Self.since(text, now: Date()) else {
                throw CoreError.invalidField(field: "since", reason: "'\(text.prefix(40))' is neither a time nor a duration",
                                             hint: "Use an RFC 3339 time (2026-11-26T10:00:00Z) or a duration like 30s, 10m, 2h, 1d.")
            }
            return date
        }
        let service = request.query("service")
        if let service {
            // A misspelt service would otherwise show nothing at all: name the ones it could be.
            var known: [String] = []
            if let serving = try await store.servingDeploymentID(appID: access.app.id, on: database),
               let deployment = try await store.deployment(id: serving, on: database) {
                known = DeploymentPlan.services(in: deployment.config)
            }
            try Self.checkService(service, of: access.app.name, known: known)
        }
        // Parameters first: a bad request says so whether or not a runtime is configured.
        guard let runtime else { throw CoreError.runtimeUnavailable }
        let stream = runtime.logStream(team: access.app.team, app: access.app.name,
                                    options: LogOptions(follow: follow, since: since, tail: tail, service: service))
        let body = ResponseBody { writer in
            // A follow runs until the client goes, which only a write notices: a quiet app's
            // stream gets an empty line every 15 s (clients skip it), so a gone client's follow
            // (and its podman processes) ends within that.
            let (texts, sink) = AsyncThrowingStream.makeStream(of: String.self)
            let pump = Task {
                do {
                    for try await line in stream { sink.yield(CoreJSON.encode(line) + "\n") }
                    sink.finish()
                } catch {
                    sink.finish(throwing: error)
                }
            }
            let keepAlive = follow ? Task {
                while (try? await Task.sleep(for: API.logKeepAlive)) != nil { sink.yield("\n") }
            } : nil
            defer {
                pump.cancel()
                keepAlive?.cancel()
            }
            for try await text in texts { try await writer.write(ByteBuffer(string: text)) }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
                        body: body)
    }

    /// How often a followed log stream with nothing to say sends an empty line.
    static let logKeepAlive: Duration = .seconds(15)

    /// `since`: an RFC 3339 time, or a duration back from now (`90s`, `10m`, `2h`, `1d`).
    static func since(_ text: String, now: Date) -> Date? {
        if let date = try? Date(text, strategy: .iso8601) { return date }
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        guard let unit = text.last.flatMap({ units[$0] }), let amount = Double(text.dropLast()), amount >= 0, amount < 1e7 else { return nil }
        return now.addingTimeInterval(-amount * unit)
    }

    // MARK: env

    func listEnv(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (principal, access) = try await app(request, context, for: .listEnv)
        var vars = try await store.env(appID: access.app.id, on: database)
        let reveal = request.query("reveal") == "true" || request.query("reveal") == "1"
        if reveal {
            // Values: only the app's owner and the team's owners and admins.
            _ = try await self.access(principal, app: .id(access.app.id), for: .revealEnv)
        } else {
            for index in vars.indices { vars[index].value = nil }
        }
        return jsonResponse(ListOf(items: vars))
    }

    func setEnv(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .writeEnv)
        let body = try await RequestReader.json(EnvBody.self, from: request)
        guard !body.vars.isEmpty, body.vars.count <= 500 else {
            throw CoreError.invalidField(field: "vars", reason: "give 1 to 500 variables", hint: "Send {\"vars\": {\"NAME\": \"value\"}}.")
        }
        try await store.setEnv(appID: access.app.id, body.vars, on: database)
        var vars = try await store.env(appID: access.app.id, on: database)
        for index in vars.indices { vars[index].value = nil }
        return jsonResponse(ListOf(items: vars))
    }

    func unsetEnv(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, access) = try await app(request, context, for: .writeEnv)
        let name = try context.parameters.require("name")
        let removed = try await store.unsetEnv(appID: access.app.id, names: [name], on: database)
        guard !removed.isEmpty else { throw CoreError.notFound(what: "env var", name: name) }
        return emptyResponse()
    }

    // MARK: tokens

    func listTokens(_ request: Request) async throws -> Response {
        let (_, user) = try await person(request)
        return jsonResponse(ListOf(items: try await store.tokens(userID: user.id, on: database)))
    }

    func createToken(_ request: Request) async throws -> Response {
        let (principal, user) = try await person(request)
        let body = try await RequestReader.json(NewTokenBody.self, from: request)
        let kindText = body.kind ?? "personal"
        guard let kind = TokenKind(rawValue: kindText), kind != .worker else {
            throw CoreError.invalidField(field: "kind", reason: "'\(kindText.prefix(40))' is not a token kind you can create",
                                         hint: "Use personal, deploy or pull (worker tokens come from 'locod admin create-token --worker').")
        }
        var appID: Int64?
        switch kind {
        case .personal, .worker:
            guard body.app == nil else {
                throw CoreError.invalidField(field: "app", reason: "personal tokens are not bound to an app", hint: "Leave 'app' out, or ask for kind 'deploy'.")
            }
        case .deploy, .pull:
            guard let name = body.app else { throw CoreError.missingField(field: "app") }
            let access = try await access(principal, app: .name(name, team: body.team), for: kind == .deploy ? .createDeployToken : .createPullCredential)
            appID = access.app.id
        }
        let lifetime = body.expiresIn.map { Duration.seconds($0) }
        let created = try await store.createToken(kind: kind, name: body.name, userID: user.id, appID: appID, lifetime: lifetime, on: database)
        return jsonResponse(created, status: .created)
    }

    func revokeToken(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let (_, user) = try await person(request)
        let text = try context.parameters.require("id")
        guard let id = Int64(text), let token = try await store.token(id: id, on: database), token.userID == user.id else {
            throw CoreError.notFound(what: "token", name: String(text.prefix(40)))
        }
        try await store.revokeToken(id: id, on: database)
        principals.forget(tokenID: id)
        return emptyResponse()
    }
}
