import ArgumentParser
import LocoShared
import Foundation
import Logging
import LocoCore
import LocoQueue
import NIOCore
import NIOPosix
import PostgresNIO

@main
struct Locod: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locod",
        abstract: "The Loco server: API, workers, migrations, queue operations.",
        version: "0.1.0",
        subcommands: [APICommand.self, Worker.self, Migrate.self, QueueCommand.self, Cron.self, Admin.self, Bench.self]
    )

    static func main() async {
        do {
            var command = try await asyncParseAsRoot()
            // In the commands that run workers, tasks run on NIO's event-loop threads, where
            // the database connections live, instead of hopping to Swift's own thread pool and
            // back on every query: a worker draining no-op jobs used 34 instead of 47 µs of CPU
            // per job, and PostgreSQL 66 instead of 74 µs (fewer context switches on a 2-core
            // machine). Not in `locod api`: alternating runs of scripts/bench api gave the same
            // reads but 12% fewer deployment submits with it. Nothing in locod blocks a thread
            // on a future (`.wait()`), which this would forbid.
            if command is Worker || command is BenchQueue {
                NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
            }
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// Options every subcommand that talks to Postgres shares.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: "postgres://USER:PASSWORD@HOST:PORT/DB (default: $LOCO_DATABASE_URL)")
    var databaseURL: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func url() throws -> DatabaseURL {
        guard let text = databaseURL ?? ProcessInfo.processInfo.environment["LOCO_DATABASE_URL"], !text.isEmpty else {
            throw UsageError(message: "no database given", hint: "Pass --database-url postgres://… or set LOCO_DATABASE_URL (scripts/services start prints one).")
        }
        var url = try DatabaseURL(text)
        url.processName = Self.processName
        if databaseURL != nil, url.password != nil {
            Self.warn("the password in --database-url can be read by every user of this machine (ps shows command lines); give the URL in LOCO_DATABASE_URL instead, or the password in PGPASSWORD or ~/.pgpass")
        }
        return url.withPassword(from: ProcessInfo.processInfo.environment, warn: Self.warn)
    }

    static func warn(_ message: String) {
        StandardStreams.write("Warning: \(message)\n", to: STDERR_FILENO)
    }

    /// What this process's connections show in `pg_stat_activity` unless the URL names it
    /// (`application_name`): `locod` and its command, e.g. `locod worker`, `locod queue stats`.
    static var processName: String {
        let words = CommandLine.arguments.dropFirst().prefix { !$0.hasPrefix("-") }.prefix(2)
        let known = words.prefix { $0.allSatisfy { $0.isASCII && ($0.isLetter || $0 == "-") } }
        return (["locod"] + known).joined(separator: " ")
    }

    func logger(_ label: String) -> Logger {
        LoggingSystem.bootstrapOnce()
        var logger = Logger(label: label)
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        return logger
    }

    /// Runs `body` with a running pool, turning connection failures into a clear error.
    func withClient<T>(_ body: (ConnectionPool, DatabaseURL, Logger) async throws -> T) async throws -> T {
        let url = try url()
        let logger = logger("locod")
        try await preflight(url, logger: logger)
        let pool = ConnectionPool(url: url, size: 2, logger: logger)
        do {
            let result = try await body(pool, url, logger)
            await pool.close()
            return result
        } catch {
            await pool.close()
            throw url.explain(error)
        }
    }
}

/// Connects once, so a wrong host, port or password is reported before anything starts.
func preflight(_ url: DatabaseURL, logger: Logger) async throws {
    do {
        let connection = try await url.connecting { try await PostgresConnection.connect(configuration: $0, id: 0, logger: logger) }
        try? await connection.close()
    } catch {
        throw url.explain(error)
    }
}

struct UsageError: CodedError {
    var code = "usage"
    var message: String
    var hint: String
}

/// A server of locod cannot listen where it was told: the machine's state or a wrong address,
/// not a usage error (exit status 1). NIO says only `bind(descriptor:ptr:bytes:): Address
/// already in use (errno: 98)` or `SocketAddressError.UnknownHost: …`.
struct ListenError: CodedError {
    let code: String
    let message: String
    let hint: String

    /// `error` told as this if the server of `what` failed to listen on `host`:`port` (nil for
    /// any other error). `hostOption` and `portOption` name the options that set them
    /// (`--host`, `--port`); `portOff` says how to serve none, if that is allowed.
    init?(explaining error: any Error, serving what: String, host: String, port: Int,
          hostOption: String, portOption: String, portOff: String? = nil) {
        let place = "cannot serve \(what) on \(host.contains(":") ? "[\(host)]" : host):\(port)"
        let otherHost = "Pass an address of this machine as \(hostOption): 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)."
        if error is SocketAddressError.UnknownHost {
            code = "unknown_host"
            message = "\(place): the host name '\(host)' is not known"
            hint = otherHost
            return
        }
        guard let failure = error as? IOError else { return nil }
        switch failure.errnoCode {
        case EADDRINUSE:
            code = "port_in_use"
            message = "\(place): something else listens there"
            hint = "Pass another \(portOption)\(portOff.map { " (\($0))" } ?? ""), or stop what listens there (ss -ltnp 'sport = :\(port)' names it)."
        case EADDRNOTAVAIL:
            code = "address_unavailable"
            message = "\(place): \(host) is not an address of this machine"
            hint = otherHost
        case EACCES where port < 1024:
            code = "port_not_permitted"
            message = "\(place): ports below 1024 need privileges this process lacks"
            hint = "Pass a \(portOption) from 1024 up, or grant locod CAP_NET_BIND_SERVICE."
        case EACCES:
            code = "port_not_permitted"
            message = "\(place): \(String(cString: strerror(failure.errnoCode)))"
            hint = "Pass another \(portOption)\(portOff.map { " (\($0))" } ?? "")."
        default:
            return nil
        }
    }
}

/// A timing option as a `Duration`. Refuses NaN, infinities, values below `atLeast` and
/// beyond ten years, any of which would otherwise crash the conversion or spin a loop.
func durationOption(seconds value: Double, option: String, atLeast minimum: Double, example: String) throws -> Duration {
    let limit = 10 * 365 * 86_400.0
    guard value.isFinite, value >= minimum, value <= limit else {
        let unit = option.hasSuffix("-ms") ? 1000.0 : option.hasSuffix("-hours") ? 1 / 3600 : 1
        let name = option.hasSuffix("-ms") ? "milliseconds" : option.hasSuffix("-hours") ? "hours" : "seconds"
        func shown(_ seconds: Double) -> String {
            let scaled = seconds * unit
            return scaled == scaled.rounded() && abs(scaled) < 1e15 ? "\(Int(scaled))" : "\(scaled)"
        }
        throw UsageError(message: "\(option) must be a number of \(name) from \(shown(minimum)) to \(shown(limit)) (got \(value.isFinite ? shown(value) : "\(value)"))",
                         hint: "Pass e.g. \(option) \(example).")
    }
    return .nanoseconds(Int64((value * 1e9).rounded()))
}

/// A listening address option (`--host`, `--metrics-host`) checked for the shapes that are
/// surely wrong (empty, a URL, a port written into it) before anything starts; whether the
/// name resolves or the address is this machine's is found when the server binds.
func checkedHost(_ value: String, _ option: String) throws {
    let example = "Pass e.g. \(option) 127.0.0.1 (this machine only) or \(option) 0.0.0.0 (every interface)."
    if value.isEmpty {
        throw UsageError(message: "\(option) must not be empty", hint: example)
    }
    if value.contains("/") || value.contains(where: \.isWhitespace) {
        throw UsageError(message: "\(option) '\(value)' is not a host name or IP address", hint: example)
    }
    let parts = value.split(separator: ":", omittingEmptySubsequences: false)
    if parts.count == 2, let port = parts.last, !port.isEmpty, port.allSatisfy(\.isNumber) {
        let portOption = option == "--host" ? "--port" : option.replacingOccurrences(of: "-host", with: "-port")
        throw UsageError(message: "\(option) '\(value)' has a port in it", hint: "Pass the address alone, and the port as \(portOption) \(port).")
    }
}

/// A whole-number option checked against the range that makes sense for it, so that a typo
/// gets a usage error instead of an overflow (a crash) or a server that cannot work.
@discardableResult
func checkedOption(_ value: Int, _ option: String, in range: ClosedRange<Int>, example: String) throws -> Int {
    guard range.contains(value) else {
        throw UsageError(message: "\(option) must be from \(range.lowerBound) to \(range.upperBound) (got \(value))", hint: "Pass e.g. \(option) \(example).")
    }
    return value
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// Prints a coded error as `Error: …` plus a hint and exits non-zero, instead of a stack of types.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as any CodedError {
        StandardStreams.write("Error: \(error.message) [\(error.code)]\nHint: \(error.hint)\n", to: STDERR_FILENO)
        throw ExitCode(error is UsageError ? 2 : 1)
    } catch let error as PSQLError {
        // PSQLError hides everything by design; the server's own message is safe to show.
        let server = DatabaseServerError(error)
        let message = server?.message ?? "PostgreSQL said: \(error.code)"
        StandardStreams.write("Error: \(message) [database_error]\nHint: \(server?.hint ?? DatabaseServerError.nextStep)\n", to: STDERR_FILENO)
        throw ExitCode(1)
    }
}

extension LoggingSystem {
    private static let once: Void = {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
    }()

    static func bootstrapOnce() { _ = once }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    encoder.dateEncodingStrategy = .iso8601
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Every component's migrations, in the order they must apply.
enum LocodSchema {
    static var all: [(component: String, migrations: [Migration])] {
        [(QueueSchema.component, QueueSchema.migrations), (CoreSchema.component, CoreSchema.migrations)]
    }
}
