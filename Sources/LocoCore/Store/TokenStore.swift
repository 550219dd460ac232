import Foundation
import LocoQueue
import PostgresNIO

extension CoreStore {
    /// Creates a token and returns its secret, the only time it is visible.
    public func createToken(kind: TokenKind, name: String, userID: Int64?, appID: Int64?,
                            lifetime: Duration?, on db: some QueryRunner) async throws -> CreatedToken {
        // A name is shown on one line of 'loco tokens': no line breaks or other control characters.
        guard (1...100).contains(name.count), !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw CoreError.invalidField(field: "name", reason: "must be 1 to 100 characters, none of them control characters", hint: "Name the token after where it is used, e.g. 'laptop' or 'github-actions'.")
        }
        var lifetime = lifetime ?? kind.defaultLifetime
        if let requested = lifetime, let maximum = kind.maximumLifetime, requested > maximum {
            if kind == .deploy { lifetime = maximum } else {
                throw CoreError.invalidField(field: "expires_in", reason: "at most \(maximum.components.seconds) seconds for a \(kind.rawValue) token",
                                             hint: "Ask for a shorter lifetime.")
            }
        }
        if let requested = lifetime, requested <= .zero {
            throw CoreError.invalidField(field: "expires_in", reason: "must be positive", hint: "Give the lifetime in seconds, e.g. 86400.")
        }
        let secret = TokenSecret.generate(kind)
        let seconds: Int64? = lifetime.map { $0.components.seconds }
        let info = try await document("""
            INSERT INTO loco_tokens AS k (kind, secret_hash, hint, name, user_id, app_id, expires_at)
            VALUES (\(kind.rawValue), \(TokenSecret.hash(secret)), \(TokenSecret.hint(secret)), \(name), \(userID), \(appID),
                    CASE WHEN \(seconds)::int8 IS NULL THEN NULL ELSE now() + make_interval(secs => \(seconds)::int8) END)
            RETURNING \(unescaped: Projection.token)
            """, as: TokenInfo.self, on: db)!
        return CreatedToken(token: info, secret: secret)
    }

    /// Who holds `secret`, or why it is not accepted.
    public func authenticate(secret: String, on db: some QueryRunner) async throws -> Principal {
        guard let kind = TokenKind.of(secret: secret), secret.utf8.count < 200 else { throw CoreError.tokenInvalid }
        let rows = try await db.run("""
            SELECT k.id, k.kind, k.user_id, k.app_id, k.name, k.expires_at <= now(), k.revoked_at IS NOT NULL,
                   CASE WHEN u.id IS NULL THEN NULL ELSE \(unescaped: Projection.user) END,
                   k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute', k.expires_at
            FROM loco_tokens k LEFT JOIN loco_users u ON u.id = k.user_id
            WHERE k.secret_hash = \(TokenSecret.hash(secret))
            """, logger: logger)
        for try await (id, storedKind, userID, appID, name, expired, revoked, userJSON, stale, expiresAt)
            in rows.decode((Int64, String, Int64?, Int64?, String, Bool?, Bool, String?, Bool, Date?).self) {
            guard storedKind == kind.rawValue else { throw CoreError.tokenInvalid }
            if revoked { throw CoreError.tokenRevoked }
            if expired == true { throw CoreError.tokenExpired }
            if (kind == .personal || kind == .deploy) && userID == nil { throw CoreError.tokenRevoked }
            if (kind == .deploy || kind == .pull) && appID == nil { throw CoreError.tokenRevoked }
            // Written at most once a minute, so reads stay reads.
            if stale { try await execute("UPDATE loco_tokens SET last_used_at = now() WHERE id = \(id)", on: db) }
            let user = try userJSON.map { try CoreJSON.decoder.decode(User.self, from: Data($0.utf8)) }
            return Principal(tokenID: id, kind: kind, user: user, appID: appID, workerName: kind == .worker ? name : nil, expiresAt: expiresAt)
        }
        throw CoreError.tokenInvalid
    }

    public func tokens(userID: Int64, on db: some QueryRunner) async throws -> [TokenInfo] {
        try await documents("SELECT \(unescaped: Projection.token) FROM loco_tokens k WHERE k.user_id = \(userID) ORDER BY k.id",
                            as: TokenInfo.self, on: db)
    }

    public func token(id: Int64, on db: some QueryRunner) async throws -> TokenInfo? {
        try await document("SELECT \(unescaped: Projection.token) FROM loco_tokens k WHERE k.id = \(id)", as: TokenInfo.self, on: db)
    }

    /// Revokes a token; revoking twice is fine.
    public func revokeToken(id: Int64, on db: some QueryRunner) async throws {
        try await execute("UPDATE loco_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = \(id)", on: db)
    }
}
