import ArgumentParser
import Foundation
import LocoConfig
import LocoShared

enum OutputFormat: String, ExpressibleByArgument, CaseIterable, Sendable {
    case human, json, ndjson
}

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Option(help: "The Loco API (default: $LOCO_API, the address saved by 'loco login', or http://127.0.0.1:8080).")
    var api: String?
    @Option(help: "A token to use instead of the saved one (default: $LOCO_TOKEN).")
    var token: String?
    @Option(name: .shortAndLong, help: "Output: human, json or ndjson.")
    var output: OutputFormat = .human
    @Flag(help: "Write a log of every request to a file and print its path.")
    var debug = false
    @Option(help: "A PEM file of the CA that signed the API's certificate, for an https:// API this machine does not trust yet (default: $LOCO_CA_CERT, or the one saved by 'loco login').")
    var caCert: String?

    var json: Bool { output != .human }

    func client(requireToken: Bool = true) throws -> APIClient {
        let environment = ProcessInfo.processInfo.environment
        let saved = Credentials.load()
        let token = token ?? environment["LOCO_TOKEN"].flatMap { $0.isEmpty ? nil : $0 } ?? saved?.token
        if requireToken && token == nil { throw CLIError.notLoggedIn() }
        var base = api ?? environment["LOCO_API"].flatMap { $0.isEmpty ? nil : $0 } ?? saved?.api ?? "http://127.0.0.1:8080"
        while base.hasSuffix("/") { base.removeLast() }
        guard base.hasPrefix("http://") || base.hasPrefix("https://"), URL(string: base)?.host != nil else {
            throw CLIError("invalid_api_address", "'\(base)' is not an http:// or https:// address", hint: "Pass --api http://HOST:PORT.")
        }
        // Absolute, so the path 'loco login' saves still holds from another folder.
        let caCert = (caCert ?? environment["LOCO_CA_CERT"].flatMap { $0.isEmpty ? nil : $0 } ?? (saved?.api == base ? saved?.caCert : nil))
            .map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        if let caCert { try APIClient.checkCA(caCert) }
        return APIClient(base: base, token: token, debug: debugLog, caCert: caCert)
    }

    var debugLog: DebugLog? {
        guard debug else { return nil }
        return Self.debugLogOnce
    }
    nonisolated(unsafe) static var debugLogOnce: DebugLog? = {
        let log = DebugLog(command: CommandLine.arguments.dropFirst().joined(separator: " "))
        if let log { Out.error("debug log: \(log.path)") }
        return log
    }()
}

/// Which app a command is about: `--app`, else loco.toml's `name` (found from the current folder up).
struct AppOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: "The app (default: the name in loco.toml).")
    var app: String?
    @Option(help: "The app's team, when you are in several teams with an app of that name.")
    var team: String?
    @Option(help: "Path to loco.toml (default: the nearest one from the current folder up).")
    var config: String?

    func resolve() throws -> (app: String, team: String?) {
        if let app { return (app, team) }
        let loaded = try loadConfig(config)
        return (loaded.config.name, team ?? loaded.config.team)
    }

    /// `/v1/apps/NAME` plus `?team=` when one is known.
    func path(_ suffix: String = "", query: [String: String] = [:]) throws -> String {
        let (app, team) = try resolve()
        var items = query
        if let team { items["team"] = team }
        return "/v1/apps/\(APIClient.escape(app))\(suffix)" + queryString(items)
    }
}

func queryString(_ items: [String: String]) -> String {
    guard !items.isEmpty else { return "" }
    return "?" + items.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(CharacterSet(charactersIn: "&=+"))) ?? $0.value)" }.joined(separator: "&")
}

/// loco.toml from `--config` or the nearest folder; its errors are the CLI's (exit 2).
func loadConfig(_ path: String?) throws -> ConfigLoader.Loaded {
    let file: URL
    if let path {
        file = URL(fileURLWithPath: path)
    } else {
        guard let found = ConfigLoader.locate(from: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)) else {
            throw CLIError("config_not_found", "no loco.toml in this folder or any folder above it",
                           hint: "Run 'loco init' here, pass --config PATH, or name the app with --app.")
        }
        file = found
    }
    do { return try ConfigLoader.load(file: file) } catch {
        throw CLIError(error.code, "\(file.path): " + error.message, hint: error.hint)
    }
}

/// Prints a JSON document, pretty for people, one line for ndjson.
func printJSON(_ value: JSONValue, compact: Bool = false) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = compact ? [.sortedKeys, .withoutEscapingSlashes] : [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = (try? encoder.encode(value)) ?? Data("null".utf8)
    Out.line(String(decoding: data, as: UTF8.self))
}

extension JSONValue {
    var items: [JSONValue] {
        if case .array(let list)? = self["items"] { return list }
        if case .array(let list) = self { return list }
        return []
    }
    /// Never traps: a number past Int64 (or NaN) in an answer is nil, not a crash.
    var int: Int64? { if case .number(let n) = self { return Int64(exactly: n.rounded(.towardZero)) }; return nil }
    var double: Double? { if case .number(let n) = self { return n }; return nil }
    var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    var text: String { stringValue ?? (int.map(String.init) ?? "") }
}

/// Dates as the API writes them (RFC 3339 with milliseconds).
func parseDate(_ value: JSONValue?) -> Date? {
    guard let text = value?.stringValue else { return nil }
    return (try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))) ?? (try? Date(text, strategy: .iso8601))
}
