import Crypto
import Foundation

/// The kinds of token, each with its own prefix so a leaked token says what it can do.
public enum TokenKind: String, Sendable, Codable, CaseIterable {
    /// A person's access token: acts as the user, with their roles; may expire; revocable.
    case personal
    /// For CI: deploys one app and follows its deployments; lives 5 minutes.
    case deploy
    /// A long-lived per-app credential that can only pull the app's images from the registry.
    case pull
    /// A worker process's identity: the only kind that may push images.
    case worker

    public var prefix: String {
        switch self {
        case .personal: "loco_pat_"
        case .deploy: "loco_dpl_"
        case .pull: "loco_pull_"
        case .worker: "loco_wkr_"
        }
    }

    /// How long a token of this kind lives when the request does not say; `nil` is until revoked.
    public var defaultLifetime: Duration? {
        switch self {
        case .personal: .seconds(90 * 86_400)
        case .deploy: .seconds(300)
        case .pull, .worker: nil
        }
    }

    /// The longest a token of this kind may live.
    public var maximumLifetime: Duration? {
        switch self {
        case .personal: .seconds(366 * 86_400)
        case .deploy: .seconds(300)
        case .pull, .worker: nil
        }
    }

    public static func of(secret: String) -> TokenKind? {
        allCases.first { secret.hasPrefix($0.prefix) }
    }
}

/// Token secrets: 256 random bits, shown once; only their SHA-256 is stored.
public enum TokenSecret {
    public static func generate(_ kind: TokenKind) -> String {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        // 43 base62 characters carry more than 256 bits.
        let body = String((0..<43).map { _ in alphabet[Int(generator.next(upperBound: UInt64(alphabet.count)))] })
        return kind.prefix + body
    }

    public static func hash(_ secret: String) -> String {
        SHA256.hash(data: Data(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// What listings show instead of the secret: the prefix and four characters.
    public static func hint(_ secret: String) -> String {
        guard let kind = TokenKind.of(secret: secret) else { return "…" }
        return kind.prefix + secret.dropFirst(kind.prefix.count).prefix(4) + "…"
    }
}

/// Who is calling, as established from a token.
public struct Principal: Sendable, Equatable {
    public var tokenID: Int64
    public var kind: TokenKind
    /// The person behind a personal or deploy token.
    public var user: User?
    /// The one app a deploy token or pull credential is for.
    public var appID: Int64?
    /// The name a worker token was created with.
    public var workerName: String?
    /// When the token stops working (`nil`: until revoked).
    public var expiresAt: Date?

    public init(tokenID: Int64, kind: TokenKind, user: User?, appID: Int64?, workerName: String?, expiresAt: Date? = nil) {
        self.tokenID = tokenID
        self.kind = kind
        self.user = user
        self.appID = appID
        self.workerName = workerName
        self.expiresAt = expiresAt
    }
}

/// A token as listings show it: never the secret.
public struct TokenInfo: Sendable, Codable, Equatable {
    public var id: Int64
    public var kind: TokenKind
    public var name: String
    public var hint: String
    public var userID: Int64?
    public var appID: Int64?
    public var createdAt: Date
    public var expiresAt: Date?
    public var revokedAt: Date?
    public var lastUsedAt: Date?

    enum CodingKeys: String, CodingKey {
        case id, kind, name, hint, userID = "user_id", appID = "app_id", createdAt = "created_at"
        case expiresAt = "expires_at", revokedAt = "revoked_at", lastUsedAt = "last_used_at"
    }
}

/// A token just created: the only time its secret is seen.
public struct CreatedToken: Sendable, Codable, Equatable {
    public var token: TokenInfo
    public var secret: String
}
