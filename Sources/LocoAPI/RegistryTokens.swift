import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import LocoCore
import _CryptoExtras

/// The OCI registry's token service (docker-registry `auth.token`): turns a Loco credential into
/// a short-lived RS256 JWT bearer token scoped to repositories and actions. The registry trusts
/// the certificate whose key signs them (its `rootcertbundle`); `kid` is that key's libtrust id.
public struct RegistryTokenIssuer: Sendable {
    let key: _RSA.Signing.PrivateKey
    public let keyID: String
    public let issuer: String
    public let service: String
    /// Pull tokens live at most this long (DESIGN.md §6: 10 minutes).
    public let pullLifetime: Duration
    /// Push tokens (workers only) live long enough for a large image.
    public let pushLifetime: Duration

    public init(privateKeyPEM: String, issuer: String = "loco", service: String = "loco-registry",
                pullLifetime: Duration = .seconds(600), pushLifetime: Duration = .seconds(1800)) throws {
        key = try _RSA.Signing.PrivateKey(pemRepresentation: privateKeyPEM)
        keyID = Self.libtrustKeyID(spki: key.publicKey.derRepresentation)
        self.issuer = issuer
        self.service = service
        self.pullLifetime = min(pullLifetime, .seconds(600))
        self.pushLifetime = pushLifetime
    }

    /// libtrust's key id: the first 240 bits of SHA-256 over the DER public key, base32, in
    /// twelve groups of four joined by ':'.
    static func libtrustKeyID(spki: Data) -> String {
        let digest = Array(SHA256.hash(data: spki)).prefix(30)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        var bits = 0, value = 0
        var text = ""
        for byte in digest {
            value = (value << 8) | Int(byte)
            bits += 8
            while bits >= 5 {
                text.append(alphabet[(value >> (bits - 5)) & 31])
                bits -= 5
            }
        }
        var groups: [String] = []
        var rest = Substring(text)
        while !rest.isEmpty { groups.append(String(rest.prefix(4))); rest = rest.dropFirst(4) }
        return groups.joined(separator: ":")
    }

    /// One `access` entry of the token.
    public struct Access: Codable, Sendable, Equatable {
        public var type: String
        public var name: String
        public var actions: [String]

        public init(type: String, name: String, actions: [String]) {
            self.type = type
            self.name = name
            self.actions = actions
        }
    }

    /// Parses `repository:team/app:pull,push` scopes (several may be given).
    public static func parse(scopes: [String]) -> [Access] {
        scopes.flatMap { $0.split(separator: " ") }.compactMap { scope in
            let parts = scope.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count >= 3 else { return nil }
            // Repository names may not hold ':', but a registry host:port prefix would; take the last field as actions.
            let actions = parts.last!.split(separator: ",").map(String.init)
            let name = parts.dropFirst().dropLast().joined(separator: ":")
            return Access(type: String(parts[0]), name: name, actions: actions)
        }
    }

    /// Signs a token granting `access` to `subject`.
    public func sign(subject: String, access: [Access], lifetime: Duration, now: Date = Date()) throws -> (token: String, expiresIn: Int) {
        let seconds = Int(lifetime.components.seconds)
        let header: [String: String] = ["alg": "RS256", "typ": "JWT", "kid": keyID]
        let claims = Claims(iss: issuer, sub: subject, aud: service, exp: Int(now.timeIntervalSince1970) + seconds,
                            nbf: Int(now.timeIntervalSince1970) - 5, iat: Int(now.timeIntervalSince1970),
                            jti: UUID().uuidString, access: access)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let signingInput = Self.base64URL(try encoder.encode(header)) + "." + Self.base64URL(try encoder.encode(claims))
        let signature = try key.signature(for: SHA256.hash(data: Data(signingInput.utf8)), padding: .insecurePKCS1v1_5)
        return (signingInput + "." + Self.base64URL(signature.rawRepresentation), seconds)
    }

    struct Claims: Codable {
        var iss: String
        var sub: String
        var aud: String
        var exp: Int
        var nbf: Int
        var iat: Int
        var jti: String
        var access: [Access]
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

struct RegistryTokenResponse: Encodable {
    var token: String
    var accessToken: String
    var expiresIn: Int
    var issuedAt: Date

    enum CodingKeys: String, CodingKey {
        case token, accessToken = "access_token", expiresIn = "expires_in", issuedAt = "issued_at"
    }
}

extension API {
    /// `GET /v1/registry/token?service=…&scope=repository:team/app:pull,push`, as docker, buildah,
    /// skopeo and podman call it: Basic auth whose password is a Loco token (or a Bearer token).
    /// Workers may push and pull anything; a pull credential pulls its one app; a person pulls the
    /// apps of their teams. Actions the caller may not have are left out of the token (the registry
    /// then refuses them), as the token spec asks.
    func registryToken(_ request: Request) async throws -> Response {
        guard let registry else { throw CoreError.routeNotFound(method: "GET", path: "/v1/registry/token") }
        let principal = try await registryPrincipal(request)
        if let service = request.query("service"), service != registry.service {
            throw CoreError.invalidField(field: "service", reason: "this token service issues tokens for '\(registry.service)' only",
                                         hint: "Point the registry's auth.token.service at '\(registry.service)'.")
        }
        let scopes = request.uri.queryParameters.getAll("scope").map { String($0) }
        var granted: [RegistryTokenIssuer.Access] = []
        for scope in RegistryTokenIssuer.parse(scopes: scopes) where scope.type == "repository" {
            let allowed = try await registryActions(principal, repository: scope.name)
            let actions = scope.actions.filter { allowed.contains($0) }
            if !actions.isEmpty { granted.append(.init(type: scope.type, name: scope.name, actions: actions)) }
        }
        let pushes = granted.contains { $0.actions.contains("push") }
        let subject = principal.workerName.map { "worker:\($0)" } ?? principal.user.map { "user:\($0.id)" } ?? "token:\(principal.tokenID)"
        let (token, expiresIn) = try registry.sign(subject: subject, access: granted,
                                                   lifetime: pushes ? registry.pushLifetime : registry.pullLifetime)
        return jsonResponse(RegistryTokenResponse(token: token, accessToken: token, expiresIn: expiresIn, issuedAt: Date()))
    }

    func registryPrincipal(_ request: Request) async throws -> Principal {
        guard let header = request.headers[.authorization] else { throw CoreError.unauthenticated }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { throw CoreError.unauthenticated }
        switch parts[0].lowercased() {
        case "bearer":
            return try await authenticate(secret: String(parts[1]))
        case "basic":
            guard let data = Data(base64Encoded: String(parts[1])), let text = Optional(String(decoding: data, as: UTF8.self)),
                  let colon = text.firstIndex(of: ":") else { throw CoreError.tokenInvalid }
            return try await authenticate(secret: String(text[text.index(after: colon)...]))
        default:
            throw CoreError.unauthenticated
        }
    }

    /// What `principal` may do to repository `team/app`.
    func registryActions(_ principal: Principal, repository: String) async throws -> Set<String> {
        switch principal.kind {
        case .worker:
            return ["pull", "push", "delete"]
        case .deploy:
            return []
        case .pull:
            guard let appID = principal.appID, let app = try await store.app(id: appID, on: database) else { return [] }
            return repository == "\(app.team)/\(app.name)" ? ["pull"] : []
        case .personal:
            let parts = repository.split(separator: "/")
            guard parts.count == 2, let user = principal.user else { return [] }
            let access = try? await store.access(app: String(parts[1]), team: String(parts[0]), userID: user.id, on: database)
            return access.map { Permissions.allows(.readApp, role: $0.role) } == true ? ["pull"] : []
        }
    }
}
