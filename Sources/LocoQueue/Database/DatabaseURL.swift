import Foundation
import LocoShared
import PostgresNIO

/// A parsed `postgres://user:password@host:port/database` URL, or, as in libpq, one naming a
/// Unix-socket folder: `postgres://user@/database?host=/run/postgresql&port=5432`.
///
/// `description` never shows the password, so the value can be logged and put in errors.
public struct DatabaseURL: Sendable, CustomStringConvertible, Equatable {
    public var host: String
    public var port: Int
    /// The folder holding PostgreSQL's socket (`.s.PGSQL.<port>`), when connecting by socket.
    public var socketDirectory: String?
    public var username: String
    public var password: String?
    public var database: String
    /// `sslmode` and its files, as libpq reads them (default `prefer`).
    public var tls: DatabaseTLS
    /// libpq's `application_name`: what `pg_stat_activity` shows for the connections.
    public var applicationName: String?
    /// The name the connections give when the URL gives none (`locod worker`); not part of
    /// the URL, so a child process handed `urlString` names itself.
    public var processName: String?
    /// The server is reached through a pooler in transaction mode (PgBouncer's
    /// `pool_mode = transaction`), said with `?pgbouncer=true` as Prisma does. Each transaction
    /// may then run in another server session, so nothing may live in a session: Loco prepares
    /// no statement by name, makes no session settings, and its workers poll instead of LISTEN.
    public var transactionPooler: Bool = false
    /// `?busy_poll=MICROSECONDS`: how long a single enqueue may poll its socket for the answer
    /// before its thread sleeps (`BusyPoll`); nil, the default, for none.
    public var busyPoll: Duration?

    /// `busyPoll` as the URL writes it.
    public var busyPollMicroseconds: Int? {
        busyPoll.map { Int($0.components.seconds) * 1_000_000 + Int($0.components.attoseconds / 1_000_000_000_000) }
    }

    public init(host: String, port: Int = 5432, username: String = "postgres", password: String? = nil, database: String = "postgres", tls: DatabaseTLS = DatabaseTLS()) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
    }

    /// TLS is demanded (`sslmode=require` or stronger).
    public var requireTLS: Bool { tls.required }

    /// The query parameters a URL may carry; any other is refused rather than ignored, so a
    /// misspelt `sslmode` does not quietly connect without TLS.
    static let parameters = ["host", "port", "sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "pgbouncer", "busy_poll"]

    public init(_ string: String) throws(QueueError) {
        guard string.hasPrefix("postgres://") || string.hasPrefix("postgresql://") else {
            throw .invalidDatabaseURL(reason: "it must start with postgres:// (got '\(Self.redacted(string))')")
        }
        guard let components = URLComponents(string: string) else { throw .invalidDatabaseURL(reason: Self.unreadable(string)) }
        let query = components.queryItems ?? []
        if let unknown = query.first(where: { !Self.parameters.contains($0.name) }) {
            let near = DidYouMean.suggestion(for: unknown.name, among: Self.parameters)
            throw .invalidDatabaseURL(reason: "it has a parameter '\(unknown.name)' Loco does not know\(near.map { " (did you mean '\($0)'?)" } ?? ""); it knows \(Self.parameters.joined(separator: ", "))")
        }
        let hostParameter = query.first(where: { $0.name == "host" })?.value
        if let hostParameter, hostParameter.hasPrefix("/") {
            socketDirectory = hostParameter
            host = "localhost"
        } else if let host = components.host.flatMap({ $0.isEmpty ? nil : $0 }) ?? hostParameter {
            // An IPv6 address is written in brackets, [::1], and connected to without them.
            self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
            socketDirectory = nil
        } else {
            throw .invalidDatabaseURL(reason: "it names no host (or ?host=/socket/folder)")
        }
        if let portParameter = query.first(where: { $0.name == "port" })?.value {
            guard let port = Int(portParameter) else { throw .invalidDatabaseURL(reason: "port '\(portParameter)' is not a number") }
            self.port = port
        } else {
            self.port = components.port ?? 5432
        }
        guard (1...65535).contains(port) else { throw .invalidDatabaseURL(reason: "port \(port) is not from 1 to 65535") }
        // URLComponents hands these over decoded already: decoding again turned a password
        // holding %2541 (a literal %41) into "A", and one with a stray % into none at all.
        self.username = components.user ?? "postgres"
        self.password = components.password
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        self.database = path.isEmpty ? self.username : path
        tls = try DatabaseTLS(query: query, overSocket: socketDirectory != nil)
        applicationName = query.first(where: { $0.name == "application_name" })?.value
        switch query.first(where: { $0.name == "pgbouncer" })?.value {
        case nil, "false", "0": transactionPooler = false
        case "true", "1": transactionPooler = true
        case let other?: throw .invalidDatabaseURL(reason: "pgbouncer '\(other)' is not true or false (true: the URL leads to a pooler in transaction mode)")
        }
        busyPoll = try Self.busyPoll(query.first(where: { $0.name == "busy_poll" })?.value, transactionPooler: transactionPooler)
    }

    /// The most a single enqueue may poll for its answer: a round trip with a disk flush takes
    /// well under it, and past it polling only burns the CPU.
    public static let busyPollLimit = 10_000

    /// `busy_poll`'s value: microseconds from 1 to `busyPollLimit`, or 0 (off).
    private static func busyPoll(_ value: String?, transactionPooler: Bool) throws(QueueError) -> Duration? {
        guard let value else { return nil }
        guard let microseconds = Int(value), (0...busyPollLimit).contains(microseconds) else {
            throw .invalidDatabaseURL(reason: "busy_poll '\(value)' is not a number of microseconds from 0 to \(busyPollLimit) (e.g. busy_poll=500; 0 turns it off)")
        }
        guard microseconds > 0 else { return nil }
        if transactionPooler {
            throw .invalidDatabaseURL(reason: "busy_poll does nothing behind a pooler in transaction mode (pgbouncer=true): enqueues there take the generic path; drop one of the two")
        }
        return .microseconds(microseconds)
    }

    /// Why `string`, which starts like a database URL, does not read as one.
    private static func unreadable(_ string: String) -> String {
        let rest = string[string.range(of: "://")!.upperBound...]
        if let at = rest.lastIndex(of: "@"), rest[..<at].contains(where: { "/?#[] ".contains($0) }) {
            return "its user or password holds a character a URL reserves; percent-encode it (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A, a space as %20)"
        }
        let authority = rest[(rest.lastIndex(of: "@").map { rest.index(after: $0) } ?? rest.startIndex)...].prefix { !"/?#".contains($0) }
        if !authority.hasPrefix("["), let colon = authority.lastIndex(of: ":") {
            let port = authority[authority.index(after: colon)...]
            if !port.allSatisfy(\.isNumber) { return "port '\(port)' is not a number" }
        }
        return "it does not read as a URL (got '\(redacted(string))')"
    }

    /// The host as a URL writes it: an IPv6 address in brackets.
    var hostInURL: String { host.contains(":") ? "[\(host)]" : host }

    /// Where the server is: `host:port`, or the socket file.
    public var endpoint: String {
        if let socketDirectory { return "\(socketDirectory)/.s.PGSQL.\(port)" }
        return "\(hostInURL):\(port)"
    }

    /// The URL with the password replaced by `***` (and only the parameters that say how it
    /// connects: the TLS mode when not the default, the pooler mark, and busy polling).
    public var description: String {
        let credentials = password == nil ? username : "\(username):***"
        var parameters: [String] = []
        if socketDirectory == nil, tls.mode != .prefer { parameters.append("sslmode=\(tls.mode.rawValue)") }
        if transactionPooler { parameters.append("pgbouncer=true") }
        if let busyPollMicroseconds { parameters.append("busy_poll=\(busyPollMicroseconds)") }
        if let socketDirectory {
            return "postgres://\(credentials)@/\(database)?" + (["host=\(socketDirectory)", "port=\(port)"] + parameters).joined(separator: "&")
        }
        return "postgres://\(credentials)@\(hostInURL):\(port)/\(database)" + (parameters.isEmpty ? "" : "?" + parameters.joined(separator: "&"))
    }

    /// The full URL, password included: only for handing to child processes.
    public var urlString: String {
        var components = URLComponents()
        components.scheme = "postgres"
        components.user = username
        components.password = password
        components.path = "/" + database
        var query: [URLQueryItem] = []
        if let socketDirectory {
            components.host = ""
            query += [URLQueryItem(name: "host", value: socketDirectory), URLQueryItem(name: "port", value: String(port))]
        } else {
            components.host = hostInURL
            components.port = port
        }
        if socketDirectory == nil { query += tls.queryItems }
        if let applicationName { query.append(URLQueryItem(name: "application_name", value: applicationName)) }
        if transactionPooler { query.append(URLQueryItem(name: "pgbouncer", value: "true")) }
        if let busyPollMicroseconds { query.append(URLQueryItem(name: "busy_poll", value: String(busyPollMicroseconds))) }
        if !query.isEmpty { components.queryItems = query }
        return components.string ?? description
    }

    public func with(database: String) -> DatabaseURL {
        var copy = self
        copy.database = database
        return copy
    }

    /// How PostgresNIO connects; throws when a TLS file named in the URL no longer reads.
    public func connectionConfiguration() throws(QueueError) -> PostgresConnection.Configuration {
        var configuration: PostgresConnection.Configuration
        if let socketDirectory {
            configuration = PostgresConnection.Configuration(unixSocketPath: "\(socketDirectory)/.s.PGSQL.\(port)", username: username,
                                                             password: password, database: database)
        } else {
            configuration = PostgresConnection.Configuration(host: host, port: port, username: username, password: password,
                                                             database: database, tls: try tls.connectionTLS())
        }
        configuration.options.connectTimeout = .seconds(5)
        if let name = applicationName ?? processName { configuration.options.additionalStartupParameters = [("application_name", name)] }
        return configuration
    }

    /// Connects by `connect`, as libpq's sslmode says: `allow` tries without TLS first, then with
    /// it if the server refused that (a pg_hba.conf that takes this user only over TLS); every
    /// other mode has one way.
    public func connecting<T>(_ connect: (PostgresConnection.Configuration) async throws -> T) async throws -> T {
        let settings = try connectionConfiguration()
        if tls.mode == .allow, settings.unixSocketPath == nil {
            var plain = settings
            plain.tls = .disable
            do {
                return try await connect(plain)
            } catch let refusal as PSQLError where refusal.serverInfo != nil {
                // Refused by the server: with TLS, below.
            }
        }
        return try await connect(settings)
    }

    static func redacted(_ string: String) -> String {
        guard let at = string.lastIndex(of: "@"), let schemeEnd = string.range(of: "://") else { return string }
        return String(string[..<schemeEnd.upperBound]) + "***" + String(string[at...])
    }
}
