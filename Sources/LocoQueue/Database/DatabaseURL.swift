import Foundation
import PostgresNIO

/// A parsed `postgres://user:password@host:port/database` URL.
///
/// `description` never shows the password, so the value can be logged and put in errors.
public struct DatabaseURL: Sendable, CustomStringConvertible, Equatable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var requireTLS: Bool

    public init(host: String, port: Int = 5432, username: String = "postgres", password: String? = nil, database: String = "postgres", requireTLS: Bool = false) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.requireTLS = requireTLS
    }

    public init(_ string: String) throws(QueueError) {
        guard let components = URLComponents(string: string),
              let scheme = components.scheme, ["postgres", "postgresql"].contains(scheme)
        else {
            throw .invalidDatabaseURL(reason: "it must start with postgres:// (got '\(Self.redacted(string))')")
        }
        guard let host = components.host, !host.isEmpty else {
            throw .invalidDatabaseURL(reason: "it names no host")
        }
        self.host = host
        self.port = components.port ?? 5432
        self.username = components.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        self.password = components.password.flatMap { $0.removingPercentEncoding }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? self.username : path
        let sslmode = components.queryItems?.first(where: { $0.name == "sslmode" })?.value ?? "disable"
        switch sslmode {
        case "disable", "allow", "prefer": self.requireTLS = false
        case "require", "verify-ca", "verify-full": self.requireTLS = true
        default: throw .invalidDatabaseURL(reason: "sslmode '\(sslmode)' is not one of disable, prefer, require")
        }
    }

    /// The URL with the password replaced by `***`.
    public var description: String {
        let credentials = password == nil ? username : "\(username):***"
        return "postgres://\(credentials)@\(host):\(port)/\(database)"
    }

    /// The full URL, password included: only for handing to child processes.
    public var urlString: String {
        var components = URLComponents()
        components.scheme = "postgres"
        components.host = host
        components.port = port
        components.user = username
        components.password = password
        components.path = "/" + database
        if requireTLS { components.queryItems = [URLQueryItem(name: "sslmode", value: "require")] }
        return components.string ?? description
    }

    public func with(database: String) -> DatabaseURL {
        var copy = self
        copy.database = database
        return copy
    }

    public var clientConfiguration: PostgresClient.Configuration {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database,
            tls: requireTLS ? .require(.makeClientConfiguration()) : .disable
        )
        configuration.options.connectTimeout = .seconds(5)
        return configuration
    }

    public var connectionConfiguration: PostgresConnection.Configuration {
        PostgresConnection.Configuration(
            host: host, port: port, username: username, password: password, database: database,
            tls: requireTLS ? .require(try! .init(configuration: .makeClientConfiguration())) : .disable
        )
    }

    static func redacted(_ string: String) -> String {
        guard let at = string.lastIndex(of: "@"), let schemeEnd = string.range(of: "://") else { return string }
        return String(string[..<schemeEnd.upperBound]) + "***" + String(string[at...])
    }
}
