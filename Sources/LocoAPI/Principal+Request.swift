import Synchronization
import Foundation
import HTTPTypes
import Hummingbird
import LocoCore

extension API {
    /// The caller, from `Authorization: Bearer <token>`.
    func principal(_ request: Request) async throws -> Principal {
        guard let header = request.headers[.authorization] else { throw CoreError.unauthenticated }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { throw CoreError.unauthenticated }
        return try await authenticate(secret: String(parts[1]).trimmingCharacters(in: .whitespaces))
    }

    func authenticate(secret: String) async throws -> Principal {
        if let cached = principals.lookup(secret) { return cached }
        let principal = try await store.authenticate(secret: secret, on: database)
        principals.store(secret, principal)
        return principal
    }

    /// A person: personal tokens only.
    func person(_ request: Request) async throws -> (Principal, User) {
        let principal = try await principal(request)
        guard principal.kind == .personal, let user = principal.user else { throw CoreError.wrongTokenKind(needed: "personal") }
        return (principal, user)
    }

    /// The app named in the path, if the caller may do `action` to it. Apps outside the caller's
    /// teams (or outside a deploy token's one app) are `not_found`.
    func app(_ request: Request, _ context: BasicRequestContext, for action: Action) async throws -> (Principal, AppAccess) {
        let principal = try await principal(request)
        let name = try context.parameters.require("app")
        let team = request.uri.queryParameters["team"].map(String.init)
        return (principal, try await access(principal, app: .name(name, team: team), for: action))
    }

    enum AppReference {
        case name(String, team: String?)
        case id(Int64)
    }

    func access(_ principal: Principal, app reference: AppReference, for action: Action) async throws -> AppAccess {
        guard Permissions.tokenAllows(principal.kind, action) else {
            throw CoreError.wrongTokenKind(needed: "personal")
        }
        let found: AppAccess?
        switch principal.kind {
        case .personal:
            guard let user = principal.user else { throw CoreError.tokenRevoked }
            switch reference {
            case .name(let name, let team): found = try await store.access(app: name, team: team, userID: user.id, on: database)
            case .id(let id): found = try await store.access(appID: id, userID: user.id, on: database)
            }
        case .deploy:
            // A deploy token acts as a developer on its one app.
            guard let appID = principal.appID, let app = try await store.app(id: appID, on: database) else { throw CoreError.tokenRevoked }
            switch reference {
            case .name(let name, let team): found = app.name == name && (team == nil || team == app.team) ? AppAccess(app: app, role: .developer, isOwner: false) : nil
            case .id(let id): found = id == appID ? AppAccess(app: app, role: .developer, isOwner: false) : nil
            }
        case .pull, .worker:
            throw CoreError.wrongTokenKind(needed: "personal")
        }
        guard let found else {
            switch reference {
            case .name(let name, _): throw CoreError.notFound(what: "app", name: name)
            case .id(let id): throw CoreError.notFound(what: "app", name: "\(id)")
            }
        }
        guard Permissions.allows(action, role: found.role, isAppOwner: found.isOwner) else {
            throw CoreError.forbidden(action: action.rawValue, role: found.role.rawValue)
        }
        return found
    }

    /// The deployment in the path, if the caller may do `action` to its app.
    func deployment(_ request: Request, _ context: BasicRequestContext, for action: Action) async throws -> (Principal, Deployment, AppAccess) {
        let principal = try await principal(request)
        let text = try context.parameters.require("id")
        guard let id = Int64(text), id > 0 else { throw CoreError.notFound(what: "deployment", name: String(text.prefix(40))) }
        guard let deployment = try await store.deployment(id: id, on: database) else { throw CoreError.notFound(what: "deployment", name: text) }
        do {
            let access = try await access(principal, app: .id(deployment.appID), for: action)
            return (principal, deployment, access)
        } catch CoreError.notFound {
            throw CoreError.notFound(what: "deployment", name: text)
        }
    }
}

/// Recently authenticated tokens, for a few seconds, so reads do not each cost a token lookup.
/// Revocation therefore takes effect within `ttl` on other API processes (at once on this one).
final class PrincipalCache: Sendable {
    private let entries = Mutex<[String: (Principal, ContinuousClock.Instant)]>([:])
    let ttl: Duration

    init(ttl: Duration = .seconds(5)) { self.ttl = ttl }

    func lookup(_ secret: String) -> Principal? {
        entries.withLock { entries in
            guard let (principal, at) = entries[secret] else { return nil }
            if ContinuousClock.now - at > ttl || principal.expiresAt.map({ $0 <= Date() }) == true {
                // Expired entries go back to the database, which says why (expired, revoked).
                entries[secret] = nil
                return nil
            }
            return principal
        }
    }

    func store(_ secret: String, _ principal: Principal) {
        entries.withLock { entries in
            if entries.count > 10_000 { entries.removeAll() }
            entries[secret] = (principal, ContinuousClock.now)
        }
    }

    func forget(tokenID: Int64) {
        entries.withLock { entries in entries = entries.filter { $0.value.0.tokenID != tokenID } }
    }
}
