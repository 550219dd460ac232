import Foundation
import LocoShared
import NIOCore
import NIOSSL
import PostgresNIO

extension DatabaseURL {
    /// Turns a connection-level failure into `QueueError.databaseUnreachable` naming host and port
    /// (and never the password); any other error is returned unchanged.
    public func explain(_ error: any Error) -> any Error {
        if error is QueueError { return error }
        if let closed = error as? ConnectionClosed {
            return QueueError.databaseUnreachable(endpoint: endpoint, reason: closed.description)
        }
        if let late = error as? ReconnectingConnection.DeadlineExceeded {
            return QueueError.databaseUnreachable(endpoint: endpoint, reason: late.description)
        }
        if let psql = error as? PSQLError {
            switch psql.code {
            case .sslUnsupported:
                return QueueError.databaseTLSUnavailable(endpoint: endpoint, mode: tls.mode.rawValue)
            case .authMechanismRequiresPassword:
                return QueueError.databaseLoginRefused(endpoint: endpoint, user: username, reason: "the server asks for a password and the URL gives none")
            case .unsupportedAuthMechanism:
                return QueueError.databaseLoginRefused(endpoint: endpoint, user: username, reason: "the server asks for a way of logging in Loco does not speak (it speaks password, md5 and scram-sha-256)")
            case .saslError:
                return QueueError.databaseLoginRefused(endpoint: endpoint, user: username, reason: "the SCRAM exchange failed")
            case .connectionError, .serverClosedConnection, .uncleanShutdown, .poolClosed, .clientClosedConnection:
                if let refused = certificateRejection(psql.underlying) { return refused }
                return QueueError.databaseUnreachable(endpoint: endpoint, reason: Self.reason(of: psql.underlying ?? psql))
            case .server:
                guard let sqlState = psql.serverInfo?[.sqlState] else { return error }
                return unreachable(sqlState: sqlState, message: psql.serverInfo?[.message]) ?? error
            default:
                return error
            }
        }
        if let server = error as? DatabaseServerError {
            return unreachable(sqlState: server.sqlState, message: server.serverMessage) ?? error
        }
        // From connecting the socket ourselves (ReconnectingConnection.open): the first address's failure.
        if let connect = error as? NIOConnectionError {
            if connect.connectionErrors.isEmpty, connect.dnsAError != nil || connect.dnsAAAAError != nil {
                return QueueError.databaseUnreachable(endpoint: endpoint, reason: Self.unresolved)
            }
            return QueueError.databaseUnreachable(endpoint: endpoint, reason: Self.reason(of: connect.connectionErrors.first?.error ?? connect))
        }
        // From busy polling's own connect (BusyPoll.connect).
        if error is BusyPoll.UnresolvedHost {
            return QueueError.databaseUnreachable(endpoint: endpoint, reason: Self.unresolved)
        }
        // NIO's word for what BusyPoll.connect says as ENAMETOOLONG.
        if let address = error as? SocketAddressError, case .unixDomainSocketPathTooLong = address {
            return QueueError.databaseUnreachable(endpoint: endpoint, reason: Self.socketPathTooLong)
        }
        if error is ChannelError || error is IOError {
            return QueueError.databaseUnreachable(endpoint: endpoint, reason: Self.reason(of: error))
        }
        return error
    }

    /// Server errors that mean the database cannot be used from here at all.
    private func unreachable(sqlState: String, message: String?) -> QueueError? {
        if sqlState.hasPrefix("28") {
            return .databaseLoginRefused(endpoint: endpoint, user: username, reason: "\(message ?? "authentication failed") (SQLSTATE \(sqlState))")
        }
        if sqlState == "3D000" { return .databaseNotFound(endpoint: endpoint, database: database) }
        // Class 57 is the server stopping, crashing or still starting ("terminating
        // connection due to administrator command", "the database system is starting up").
        if sqlState.hasPrefix("57") {
            return .databaseUnreachable(endpoint: endpoint, reason: "\(message ?? "the server is shutting down") (SQLSTATE \(sqlState))")
        }
        return nil
    }

    /// A TLS handshake that failed on the server's certificate, said as what was wrong with it.
    /// (BoringSSL reports only that the check failed, not which part of it.)
    private func certificateRejection(_ error: (any Error)?) -> QueueError? {
        let mode = tls.mode.rawValue
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return .databaseCertificateRejected(endpoint: endpoint, mode: mode, reason: "it is not made out to '\(host)' (no such name or address among its subject alternative names)")
        }
        guard let ssl = error as? NIOSSLError, case let .handshakeFailed(.sslError(errors)) = ssl,
              errors.contains(where: { "\($0)".contains("CERTIFICATE_VERIFY_FAILED") })
        else { return nil }
        let roots = tls.rootCertificate.map { $0 == "system" ? "the system's CAs" : "sslrootcert \($0)" } ?? "the system's CAs (no sslrootcert given)"
        return .databaseCertificateRejected(endpoint: endpoint, mode: mode, reason: "it is not signed by a CA in \(roots), or it is expired or not yet valid")
    }

    /// `explain(error)` as text for a log line. PSQLError's own description hides everything;
    /// the server's message and SQLSTATE are safe to show (they never carry the password).
    public func describe(_ error: any Error) -> String {
        let explained = explain(error)
        if let psql = explained as? PSQLError { return DatabaseServerError.text(of: psql) }
        return "\(explained)"
    }

    private static let socketPathTooLong = "the socket file's path is longer than a Unix socket's address holds (107 bytes); use a shorter ?host= folder"

    private static let unresolved = "the host name resolves to no address (is it spelt right, and does this machine's DNS know it?)"

    private static func reason(of error: any Error) -> String {
        if let io = error as? IOError {
            switch io.errnoCode {
            case 111: return "connection refused"
            case 2: return "no socket file there (is PostgreSQL running, with this port?)"
            case 110: return "connection timed out"
            case 113: return "no route to host"
            case 36: return socketPathTooLong
            default: return "I/O error \(io.errnoCode)"
            }
        }
        if let channel = error as? ChannelError, case .connectTimeout = channel { return "connection timed out" }
        // Any other TLS failure (a protocol or cipher the two sides do not share, a server
        // that closed mid-handshake): BoringSSL's own words are all there is to say.
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            // "…:SSL routines:OPENSSL_internal:TLSV1_ALERT_INTERNAL_ERROR at /path/tls_record.cc:491"
            let text = "\(error)"
            let names = text.components(separatedBy: "OPENSSL_internal:").dropFirst().map { $0.prefix { $0 != " " && $0 != "]" && $0 != ")" } }
            let said = names.isEmpty ? text : names.joined(separator: ", ")
            return "the TLS handshake failed (\(said)); the server's log says why, e.g. no TLS version or cipher both sides accept"
        }
        let text = String(describing: error)
        if text.contains("refused") { return "connection refused" }
        return "connection failed"
    }
}

/// An error PostgreSQL itself reported: read by `SingleEnqueueHandler` from the server's
/// ErrorResponse, or made from a `PSQLError` (whose own description hides everything). The
/// server's message and SQLSTATE are safe to show; the detail may quote row values, so it is
/// kept out of the message.
public struct DatabaseServerError: CodedError {
    public let sqlState: String
    public let serverMessage: String
    public let detail: String?
    /// FATAL or PANIC: the server ends the session after sending it.
    public let endsSession: Bool

    init(fields: [PostgresMessage.Error.Field: String]) {
        self.init(sqlState: fields[.sqlState], message: fields[.message], detail: fields[.detail],
                  severity: fields[.severity] ?? fields[.localizedSeverity])
    }

    /// The server's part of `error`; nil when the error did not come from the server.
    public init?(_ error: PSQLError) {
        guard let info = error.serverInfo else { return nil }
        self.init(sqlState: info[.sqlState], message: info[.message], detail: info[.detail],
                  severity: info[.severity] ?? info[.localizedSeverity])
    }

    /// The server's part of any `error`: a `DatabaseServerError` as it is, or a `PSQLError`'s
    /// (which the store's operations code, and the connection's own paths may not have).
    static func server(of error: any Error) -> DatabaseServerError? {
        (error as? DatabaseServerError) ?? (error as? PSQLError).flatMap(DatabaseServerError.init)
    }

    private init(sqlState: String?, message: String?, detail: String?, severity: String?) {
        self.sqlState = sqlState ?? "XX000"
        serverMessage = message ?? "unknown error"
        self.detail = detail
        endsSession = severity == "FATAL" || severity == "PANIC"
    }

    /// `error` as a log line can show it: the server's message and SQLSTATE, never its detail.
    public static func text(of error: PSQLError) -> String {
        DatabaseServerError(error)?.message ?? "PostgreSQL client error: \(error.code)"
    }

    /// `body`'s result; an error PostgreSQL reported in it is thrown as a `DatabaseServerError`
    /// instead of PostgresNIO's `PSQLError`, whose description hides even the server's message.
    static func coding<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as PSQLError {
            guard let server = DatabaseServerError(error) else { throw error }
            throw server
        } catch let error as PostgresDecodingError {
            // Its value stays out: it may be a job's args.
            throw QueueError.schemaMismatch(reason: "column '\(error.columnName)' is PostgreSQL's \(error.postgresType), which Loco cannot read as \(error.targetType)")
        }
    }

    public var code: String { "database_error" }
    public var message: String { "PostgreSQL said: \(serverMessage) (SQLSTATE \(sqlState))" }
    public var hint: String { Self.hint(sqlState: sqlState, serverMessage: serverMessage) }
    public static let nextStep = "Run 'locod migrate' if the schema is missing; otherwise check the PostgreSQL log."

    /// The next step for what PostgreSQL said: specific where the SQLSTATE names a cause an
    /// operator can act on, else `nextStep`.
    public static func hint(sqlState: String, serverMessage: String) -> String {
        switch sqlState {
        case "25006":
            // read_only_sql_transaction: after a failover the URL often names the old primary.
            return "This database refuses writes: the URL points at a read-only standby, or default_transaction_read_only is on. "
                + "Point the database URL at the primary."
        case "54000" where serverMessage.contains("NOTIFY queue"):
            return "PostgreSQL's NOTIFY queue is full: a session that ran LISTEN sits in a long transaction and holds it. "
                + "Find it with SELECT pid, xact_start, query FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' ORDER BY xact_start; "
                + "end it with SELECT pg_terminate_backend(pid). A worker's loco_queue_notification_queue_usage_ratio shows the fill."
        default:
            return nextStep
        }
    }
    public var description: String { message }
}
