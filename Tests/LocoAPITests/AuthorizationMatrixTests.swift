import Foundation
import HTTPTypes
import Hummingbird
import LocoAPI
import LocoCore
import LocoQueue
import LocoTestSupport
import PostgresNIO
import NIOCore
import Testing
import _CryptoExtras

/// Who calls, in the matrix.
enum Caller: String, CaseIterable, CustomStringConvertible {
    case owner, admin, developer, viewer
    /// A developer who owns the app under test.
    case appOwner = "app-owner"
    /// The owner of another team.
    case otherTeam = "other-team"
    case noToken = "no-token"
    case expired
    /// A deploy token for the app under test.
    case deployToken = "deploy-token"
    /// A registry pull credential for the app under test.
    case pullToken = "pull-token"

    var description: String { rawValue }
}

/// The documented permission matrix (README.md "Permissions"), written out by hand so the
/// test checks the code against the documentation rather than against itself.
let documentedMatrix: [Action: Set<Caller>] = {
    let everyone: Set<Caller> = [.owner, .admin, .developer, .viewer, .appOwner]
    let developers: Set<Caller> = [.owner, .admin, .developer, .appOwner]
    let ownersAndAdmins: Set<Caller> = [.owner, .admin]
    let ownersAdminsAndAppOwner: Set<Caller> = [.owner, .admin, .appOwner]
    return [
        .readTeam: everyone, .readApp: everyone,
        .createApp: developers, .deploy: developers, .cancelDeployment: developers, .listEnv: developers,
        .writeEnv: developers, .createDeployToken: developers,
        .revealEnv: ownersAdminsAndAppOwner, .readLogs: ownersAdminsAndAppOwner, .createPullCredential: ownersAdminsAndAppOwner,
        .manageMembers: ownersAndAdmins, .deleteApp: ownersAndAdmins,
    ]
}()

/// Everything one case needs: team acme with app `web` (in flight) and app `done` (ended),
/// team `other`, and a token for every caller.
struct Fixture {
    var tokens: [Caller: String] = [:]
    var web: App
    var inFlight: Deployment
    var ended: Deployment
    var counter: Int

    static func make(_ harness: Harness, context: Data, counter: Int) async throws -> Fixture {
        let store = harness.store, db = harness.database.client
        let suffix = "\(counter)"
        var users: [Caller: User] = [:]
        for caller in [Caller.owner, .admin, .developer, .viewer, .appOwner, .otherTeam] {
            users[caller] = try await harness.user("\(caller.rawValue)-\(suffix)@example.com")
        }
        let acme = try await harness.team("acme-\(suffix)", owner: users[.owner]!)
        try await harness.add(users[.admin]!, to: acme, as: .admin)
        try await harness.add(users[.developer]!, to: acme, as: .developer)
        try await harness.add(users[.viewer]!, to: acme, as: .viewer)
        try await harness.add(users[.appOwner]!, to: acme, as: .developer)
        let extra = try await harness.user("extra-\(suffix)@example.com")
        try await harness.add(extra, to: acme, as: .developer)
        _ = try await harness.user("new-\(suffix)@example.com")
        _ = try await harness.team("other-\(suffix)", owner: users[.otherTeam]!)
        let web = try await harness.app("web", in: acme, owner: users[.appOwner]!)
        let done = try await harness.app("done", in: acme, owner: users[.appOwner]!)
        try await store.setEnv(appID: web.id, ["DATABASE_URL": "postgres://secret"], on: db)

        func stored() throws -> StagedContext {
            let upload = try harness.api.contexts.begin()
            try upload.write(Array(context))
            return try upload.finish()
        }
        let first = try stored()
        let inFlight = try await store.submit(DeploymentRequest(app: web, config: .object([:]), context: first,
                                                                createdBy: nil, queueBehind: false), on: db)
        // As if pushed: so a redeploy of it can be created.
        _ = try await harness.database.client.query("UPDATE loco_deployments SET image_ref = 'registry/acme/web@sha256:ab', images = '{\"web\": \"registry/acme/web@sha256:ab\"}' WHERE id = \(inFlight.id)").collect()
        let second = try stored()
        let endedRun = try await store.submit(DeploymentRequest(app: done, config: .object([:]), context: second,
                                                                createdBy: nil, queueBehind: false), on: db)
        let ended = try await store.cancel(deploymentID: endedRun.id, on: db).0

        var tokens: [Caller: String] = [:]
        for (caller, user) in users { tokens[caller] = try await harness.token(for: user) }
        tokens[.expired] = try await harness.token(for: users[.owner]!, lifetime: .seconds(1))
        _ = try await harness.database.client.query("UPDATE loco_tokens SET expires_at = now() - interval '1 second' WHERE expires_at < now() + interval '1 minute' AND kind = 'personal'").collect()
        tokens[.deployToken] = try await harness.token(for: users[.developer]!, kind: .deploy, app: web)
        tokens[.pullToken] = try await harness.token(for: users[.appOwner]!, kind: .pull, app: web)
        return Fixture(tokens: tokens, web: web, inFlight: inFlight, ended: ended, counter: counter)
    }
}

/// One route's case: how to call it, what success looks like, what it needs.
struct RouteCase {
    var method: HTTPRequest.Method
    var route: String
    /// The action the call needs (may differ from the route's, e.g. `?reveal=true`).
    var action: Action?
    var success: Int
    /// Whether the route reaches into team acme (so another team's owner gets 404).
    var scoped: Bool
    /// Whether the deploy token's app is the one reached.
    var reachesWeb: Bool
    /// Whether the call changes the fixture, so each caller needs a fresh one.
    var mutates: Bool
    var request: @Sendable (Fixture, Caller) -> (path: String, json: String?, multipart: Bool)
}

@Suite("Authorization matrix")
struct AuthorizationMatrixTests {
    static func cases() -> [RouteCase] {
        func plain(_ path: String) -> @Sendable (Fixture, Caller) -> (path: String, json: String?, multipart: Bool) {
            { _, _ in (path, nil, false) }
        }
        return [
            RouteCase(method: .get, route: "/healthz", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false, request: plain("/healthz")),
            RouteCase(method: .get, route: "/readyz", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false, request: plain("/readyz")),
            RouteCase(method: .get, route: "/metrics", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false, request: plain("/metrics")),
            RouteCase(method: .get, route: "/v1/whoami", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false, request: plain("/v1/whoami")),
            RouteCase(method: .get, route: "/v1/teams", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false, request: plain("/v1/teams")),
            RouteCase(method: .post, route: "/v1/teams", action: nil, success: 201, scoped: false, reachesWeb: false, mutates: false) { f, c in
                ("/v1/teams", #"{"name":"t-\#(f.counter)-\#(c.rawValue)"}"#, false)
            },
            RouteCase(method: .get, route: "/v1/teams/{team}", action: .readTeam, success: 200, scoped: true, reachesWeb: false, mutates: false) { f, _ in
                ("/v1/teams/acme-\(f.counter)", nil, false)
            },
            RouteCase(method: .get, route: "/v1/teams/{team}/members", action: .readTeam, success: 200, scoped: true, reachesWeb: false, mutates: false) { f, _ in
                ("/v1/teams/acme-\(f.counter)/members", nil, false)
            },
            RouteCase(method: .put, route: "/v1/teams/{team}/members/{email}", action: .manageMembers, success: 201, scoped: true, reachesWeb: false, mutates: true) { f, _ in
                ("/v1/teams/acme-\(f.counter)/members/new-\(f.counter)@example.com", #"{"role":"viewer"}"#, false)
            },
            RouteCase(method: .delete, route: "/v1/teams/{team}/members/{email}", action: .manageMembers, success: 204, scoped: true, reachesWeb: false, mutates: true) { f, _ in
                ("/v1/teams/acme-\(f.counter)/members/extra-\(f.counter)@example.com", nil, false)
            },
            RouteCase(method: .get, route: "/v1/apps", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false, request: plain("/v1/apps")),
            RouteCase(method: .post, route: "/v1/apps", action: .createApp, success: 201, scoped: true, reachesWeb: false, mutates: false) { f, c in
                ("/v1/apps", #"{"name":"app-\#(c.rawValue)","team":"acme-\#(f.counter)"}"#, false)
            },
            RouteCase(method: .get, route: "/v1/apps/{app}", action: .readApp, success: 200, scoped: true, reachesWeb: true, mutates: false, request: plain("/v1/apps/web")),
            RouteCase(method: .delete, route: "/v1/apps/{app}", action: .deleteApp, success: 204, scoped: true, reachesWeb: true, mutates: true, request: plain("/v1/apps/web")),
            RouteCase(method: .get, route: "/v1/apps/{app}/status", action: .readApp, success: 200, scoped: true, reachesWeb: true, mutates: false, request: plain("/v1/apps/web/status")),
            // Logs are owner-only; until a runtime exists an allowed caller hears so with 503.
            RouteCase(method: .get, route: "/v1/apps/{app}/instances", action: .readApp, success: 503, scoped: true, reachesWeb: true, mutates: false,
                      request: plain("/v1/apps/web/instances")),
            RouteCase(method: .get, route: "/v1/apps/{app}/logs", action: .readLogs, success: 503, scoped: true, reachesWeb: true, mutates: false, request: plain("/v1/apps/web/logs")),
            RouteCase(method: .post, route: "/v1/apps/{app}/deployments", action: .deploy, success: 201, scoped: true, reachesWeb: true, mutates: false) { _, _ in
                ("/v1/apps/web/deployments?queue=true", nil, true)
            },
            RouteCase(method: .get, route: "/v1/apps/{app}/deployments", action: .readApp, success: 200, scoped: true, reachesWeb: true, mutates: false, request: plain("/v1/apps/web/deployments")),
            RouteCase(method: .get, route: "/v1/deployments/{id}", action: .readApp, success: 200, scoped: true, reachesWeb: true, mutates: false) { f, _ in
                ("/v1/deployments/\(f.inFlight.id)", nil, false)
            },
            RouteCase(method: .post, route: "/v1/deployments/{id}/cancel", action: .cancelDeployment, success: 200, scoped: true, reachesWeb: true, mutates: true) { f, _ in
                ("/v1/deployments/\(f.inFlight.id)/cancel", nil, false)
            },
            RouteCase(method: .post, route: "/v1/deployments/{id}/redeploy", action: .deploy, success: 201, scoped: true, reachesWeb: true, mutates: false) { f, _ in
                ("/v1/deployments/\(f.inFlight.id)/redeploy?queue=true", nil, false)
            },
            // The ended deployment belongs to app `done`, which a deploy token for `web` cannot see.
            RouteCase(method: .get, route: "/v1/deployments/{id}/events", action: .readApp, success: 200, scoped: true, reachesWeb: false, mutates: false) { f, _ in
                ("/v1/deployments/\(f.ended.id)/events", nil, false)
            },
            // web serves nothing in the fixture: a scale change is only saved, no deployment.
            RouteCase(method: .get, route: "/v1/apps/{app}/scale", action: .readApp, success: 200, scoped: true, reachesWeb: true, mutates: false,
                      request: plain("/v1/apps/web/scale")),
            RouteCase(method: .put, route: "/v1/apps/{app}/scale", action: .deploy, success: 200, scoped: true, reachesWeb: true, mutates: false) { _, _ in
                ("/v1/apps/web/scale", #"{"replicas":2}"#, false)
            },
            RouteCase(method: .delete, route: "/v1/apps/{app}/scale", action: .deploy, success: 200, scoped: true, reachesWeb: true, mutates: false,
                      request: plain("/v1/apps/web/scale")),
            RouteCase(method: .get, route: "/v1/apps/{app}/env", action: .listEnv, success: 200, scoped: true, reachesWeb: true, mutates: false, request: plain("/v1/apps/web/env")),
            RouteCase(method: .get, route: "/v1/apps/{app}/env", action: .revealEnv, success: 200, scoped: true, reachesWeb: true, mutates: false,
                      request: plain("/v1/apps/web/env?reveal=true")),
            RouteCase(method: .put, route: "/v1/apps/{app}/env", action: .writeEnv, success: 200, scoped: true, reachesWeb: true, mutates: false) { _, _ in
                ("/v1/apps/web/env", #"{"vars":{"LOG_LEVEL":"debug"}}"#, false)
            },
            RouteCase(method: .delete, route: "/v1/apps/{app}/env/{name}", action: .writeEnv, success: 204, scoped: true, reachesWeb: true, mutates: true,
                      request: plain("/v1/apps/web/env/DATABASE_URL")),
            RouteCase(method: .get, route: "/v1/tokens", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false, request: plain("/v1/tokens")),
            RouteCase(method: .post, route: "/v1/tokens", action: nil, success: 201, scoped: false, reachesWeb: false, mutates: false) { _, _ in
                ("/v1/tokens", #"{"name":"laptop"}"#, false)
            },
            RouteCase(method: .post, route: "/v1/tokens", action: .createDeployToken, success: 201, scoped: true, reachesWeb: true, mutates: false) { f, _ in
                ("/v1/tokens", #"{"name":"ci","kind":"deploy","app":"web","team":"acme-\#(f.counter)"}"#, false)
            },
            RouteCase(method: .post, route: "/v1/tokens", action: .createPullCredential, success: 201, scoped: true, reachesWeb: true, mutates: false) { f, _ in
                ("/v1/tokens", #"{"name":"node","kind":"pull","app":"web","team":"acme-\#(f.counter)"}"#, false)
            },
            // Revoking: the caller's own personal token (a fresh one is made per case, see below).
            RouteCase(method: .delete, route: "/v1/tokens/{id}", action: nil, success: 204, scoped: false, reachesWeb: false, mutates: true) { _, _ in
                ("/v1/tokens/OWN", nil, false)
            },
            RouteCase(method: .get, route: "/v1/registry/token", action: nil, success: 200, scoped: false, reachesWeb: false, mutates: false,
                      request: plain("/v1/registry/token?service=loco-registry&scope=repository:acme/web:pull")),
        ]
    }

    /// What the documentation says `caller` gets from `routeCase`.
    static func expected(_ routeCase: RouteCase, _ caller: Caller) -> Int {
        let publicRoute = !APIRoutes.all.first { $0.path == routeCase.route && $0.method == routeCase.method }!.authenticated
        if publicRoute { return routeCase.success }
        switch caller {
        case .noToken, .expired: return 401
        case .pullToken: return ["/v1/registry/token", "/v1/whoami"].contains(routeCase.route) ? 200 : 403
        case .deployToken:
            if ["/v1/registry/token", "/v1/whoami"].contains(routeCase.route) { return 200 }
            guard let action = routeCase.action, action == .deploy || action == .readApp else { return 403 }
            return routeCase.reachesWeb ? routeCase.success : 404
        case .otherTeam:
            return routeCase.scoped ? 404 : routeCase.success
        case .owner, .admin, .developer, .viewer, .appOwner:
            guard let action = routeCase.action else { return routeCase.success }
            return documentedMatrix[action]!.contains(caller) ? routeCase.success : 403
        }
    }

    @Test("every route of the router has cases in the matrix")
    func everyRouteIsCovered() async throws {
        try await Harness.with { harness in
            let routed = Set(harness.api.router().routes.map { "\($0.method) \($0.path)" })
            let covered = Set(Self.cases().map { "\($0.method) \($0.route)" })
            #expect(routed == covered, "routes without matrix cases: \(routed.subtracting(covered).sorted()); cases without routes: \(covered.subtracting(routed).sorted())")
            #expect(routed.count == APIRoutes.all.count)
        }
    }

    @Test("every route × every caller answers the documented status")
    func matrix() async throws {
        let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let issuer = try RegistryTokenIssuer(privateKeyPEM: key.pemRepresentation)
        try await Harness.with(registry: issuer) { harness in
            let context = try await TarGz.sample()
            var counter = 0
            var failures: [String] = []
            var checked = 0
            for routeCase in Self.cases() {
                counter += 1
                var fixture = try await Fixture.make(harness, context: context, counter: counter)
                for caller in Caller.allCases {
                    if routeCase.mutates {
                        counter += 1
                        fixture = try await Fixture.make(harness, context: context, counter: counter)
                    }
                    var (path, json, multipart) = routeCase.request(fixture, caller)
                    let token = fixture.tokens[caller]
                    if path == "/v1/tokens/OWN" {
                        // A token of the caller's own to revoke (for token kinds that have a user).
                        let own = try await harness.store.tokens(userID: try await harness.store.authenticate(secret: fixture.tokens[.owner]!, on: harness.database.client).user!.id,
                                                                 on: harness.database.client).first!
                        var id = own.id
                        if let token, let principal = try? await harness.store.authenticate(secret: token, on: harness.database.client),
                           let user = principal.user {
                            id = try await harness.store.createToken(kind: .personal, name: "spare", userID: user.id, appID: nil, lifetime: nil,
                                                                     on: harness.database.client).token.id
                        }
                        path = "/v1/tokens/\(id)"
                    }
                    var headers: HTTPFields = [:]
                    var body: ByteBuffer?
                    if multipart { (headers, body) = Harness.deployBody(context: context) }
                    if let json { headers[.contentType] = "application/json"; body = ByteBuffer(string: json) }
                    let reply = try await harness.call(routeCase.method, path, token: token, headers: headers, body: body)
                    let want = Self.expected(routeCase, caller)
                    checked += 1
                    if reply.status != want {
                        failures.append("\(routeCase.method) \(path) as \(caller): got \(reply.status), documented \(want): \(reply.text.prefix(200))")
                    }
                    if reply.status >= 400 && reply.status != 503 || (reply.status == 503 && reply.errorCode == nil) {
                        if reply.errorCode == nil || reply.json?["error"]?["hint"]?.stringValue == nil {
                            failures.append("\(routeCase.method) \(path) as \(caller): error without code and hint: \(reply.text.prefix(200))")
                        }
                    }
                }
            }
            #expect(failures.isEmpty, "\(failures.count) of \(checked) cases differ:\n\(failures.joined(separator: "\n"))")
            #expect(checked == Self.cases().count * Caller.allCases.count)
        }
    }
}
