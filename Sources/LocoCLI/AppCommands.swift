import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOFoundationCompat
import NIOConcurrencyHelpers
import NIOHTTP1
import LocoShared
import NIOCore

/// `loco status`: what serves now, what is in flight, the last failure.
struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The app: what serves now, where, what is in flight, the last failure.")
    @OptionGroup var app: AppOptions
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let client = try global.client()
        var status = try await client.call(.GET, try app.path("/status"))
        // What runs now, as the runtime sees it; none without a runtime (`locod api --runtime none`).
        let instances = (try? await client.call(.GET, try app.path("/instances")))?.items
        if global.json {
            if case .object(var fields) = status, let instances { fields["instances"] = .array(instances); status = .object(fields) }
            printJSON(status)
            return
        }
        let terminal = Terminal.current
        Out.line(terminal.bold("\(status["app"]?["team"]?.text ?? "")/\(status["app"]?["name"]?.text ?? "")") + " (\(status["app"]?["type"]?.text ?? "service"))")
        if let current = status["current"], case .object = current {
            Out.line("  serving:    deployment \(current["id"]?.text ?? "") since \(current["finished_at"]?.text ?? "")")
            if let url = current["url"]?.stringValue { Out.line("  url:        \(url)") }
            // What runs: each service, its path prefix and its replica settings; with several, each
            // service's own image (`image_ref` is only the one pushed last).
            let config = current["config"]
            let services: [JSONValue] = if case .array(let list)? = config?["services"] { list } else {
                [.object(["name": .string("web"), "path": config?["routing"]?["path"] ?? .string("/"), "resources": config?["resources"] ?? .null])]
            }
            if services.count == 1, let image = current["image_ref"]?.stringValue { Out.line("  image:      \(image)") }
            for service in services {
                let resources = service["resources"]
                let low = resources?["min_replicas"]?.int ?? 1, high = resources?["max_replicas"]?.int ?? low
                var replicas = low == high ? Scale.replicas(low) : "\(low)-\(high) replicas"
                // What the serving version runs, when its apply recorded it ('loco scale' may have set it).
                if let name = service["name"]?.stringValue, let running = current["replicas"]?[name]?.int {
                    replicas = Scale.replicas(running) + (status["scale"]?[name]?.int == running ? " by 'loco scale'" : "")
                }
                Out.line("  service:    \(service["name"]?.text ?? "") at \(service["path"]?.text ?? "/") (\(replicas), \(resources?["memory"]?.text ?? "") memory)")
                if services.count > 1, let name = service["name"]?.stringValue, let image = current["images"]?[name]?.stringValue {
                    Out.line("    image:    \(image)")
                }
            }
            let serving = (instances ?? []).filter { $0["deployment_id"] == current["id"] }
            for (index, instance) in serving.enumerated() {
                Out.line((index == 0 ? "  instances:  " : "              ") + Self.describe(instance))
            }
            // Down and waiting to start again: say where to look and what fixes it.
            if let refused = serving.first(where: { $0["start_error"]?.stringValue != nil && $0["state"]?.stringValue != "running" })?["service"]?.stringValue {
                Out.line("  Next:       \(refused) could not be started again for the reason above; once that is fixed it starts at its next try, or 'loco restart' starts it now")
            } else if let looping = serving.first(where: { $0["next_start_at"]?.stringValue != nil })?["service"]?.stringValue {
                Out.line("  Next:       'loco logs' shows why \(looping) keeps exiting; deploy a fix, or 'loco rollback' to the version before")
            }
        } else {
            Out.line("  serving:    nothing yet — run 'loco deploy'")
        }
        if let flight = status["in_flight"], case .object = flight {
            Out.line("  in flight:  deployment \(flight["id"]?.text ?? "") (\(flight["state"]?.text ?? ""))")
        }
        if let waiting = status["waiting"]?.int, waiting > 0 { Out.line("  in line:    \(waiting) more") }
        if let failure = status["last_failure"], case .object = failure {
            Out.line("  last failure: deployment \(failure["id"]?.text ?? "") — \(failure["report"]?["code"]?.text ?? "") at \(failure["report"]?["stage"]?.text ?? ""): \(failure["report"]?["message"]?.text ?? "")")
        }
    }
}

extension Status {
    /// "web.r2    running since 2026-12-03T08:25:27Z, restarted 2 times (last exit code 137)",
    /// "web       exited (exit code 1), restarted 4 times; starts again in 40 s (crash-loop back-off)",
    /// "web       exited (exit code 137), restarted 2 times; could not be started again (…address already in use); tries again in 20 s"
    static func describe(_ instance: JSONValue, now: Date = Date()) -> String {
        let name = (instance["service"]?.text ?? "") + Logs.replicaSuffix(instance["replica"]?.int)
        var text = name.padding(toLength: max(10, name.count + 1), withPad: " ", startingAt: 0) + (instance["state"]?.text ?? "")
        let running = instance["state"]?.stringValue == "running"
        if running, let since = instance["started_at"]?.stringValue { text += " since \(since)" }
        let code = instance["last_exit_code"]?.int
        if !running, let code { text += " (exit code \(code))" }
        let restarts = instance["restarts"]?.int ?? 0
        if restarts > 0 { text += ", restarted \(restarts) time\(restarts == 1 ? "" : "s")" }
        if running, restarts > 0, let code { text += " (last exit code \(code))" }
        let startError = running ? nil : instance["start_error"]?.stringValue
        if let startError { text += "; could not be started again (\(startError))" }
        if !running, let at = parseDate(instance["next_start_at"]) {
            let seconds = Int(at.timeIntervalSince(now).rounded(.up))
            let when = seconds > 0 ? "in \(seconds) s" : "now"
            text += startError == nil ? "; starts again \(when) (crash-loop back-off)" : "; tries again \(when)"
        }
        return text
    }
}

/// `loco deployments`: history, newest first.
struct Deployments: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The app's deployments, newest first.")
    @Option(help: "How many (1-200).") var limit = 20
    @Option(help: "Only deployments older than this id: the next page starts below the last id shown.") var before: Int64?
    @OptionGroup var app: AppOptions
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        guard (1...200).contains(limit) else {
            throw CLIError("invalid_option", "--limit must be from 1 to 200 (got \(limit))", hint: "Pass e.g. --limit 20; --before ID pages further back.")
        }
        if let before, before < 1 {
            throw CLIError("invalid_option", "--before must be a deployment id, 1 or more (got \(before))", hint: "Pass the last id the page before showed.")
        }
        var query = ["limit": String(limit)]
        if let before { query["before"] = String(before) }
        let list = try await global.client().call(.GET, try app.path("/deployments", query: query))
        if global.json { printJSON(list); return }
        if list.items.isEmpty { Out.line(before == nil ? "No deployments yet." : "No deployments before \(before ?? 0)."); return }
        Out.line("ID\tSTATE\tCREATED\tDURATION\tWHAT\tRESULT")
        for deployment in list.items {
            let created = parseDate(deployment["created_at"]), finished = parseDate(deployment["finished_at"])
            let duration = created.flatMap { start in finished.map { Format.seconds($0.timeIntervalSince(start)) } } ?? "-"
            var result = deployment["report"]?["code"]?.stringValue ?? deployment["url"]?.stringValue ?? ""
            // A rollback or restart: whose images it ran.
            if let source = deployment["redeploy_of"]?.int { result += (result.isEmpty ? "" : " ") + "(\(source)'s images)" }
            // Why: "deploy", or what made a deployment without a build ("rollback to 27", "env: set A").
            let what = deployment["reason"]?.stringValue ?? (deployment["redeploy_of"]?.int.map { "redeploy of \($0)" } ?? "deploy")
            Out.line("\(deployment["id"]?.text ?? "")\t\(deployment["state"]?.text ?? "")\t\(deployment["created_at"]?.text ?? "")\t\(duration)\t\(what)\t\(result)")
        }
        if list.items.count == limit, let last = list.items.last?["id"]?.int {
            Out.line("Older deployments may exist: loco deployments --before \(last)")
        }
    }
}

/// `loco deployment show ID`.
struct DeploymentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "deployment", abstract: "One deployment.", subcommands: [Show.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "State, stage timings, image, URL, and the failure report.")
        @Argument(help: "The deployment's id.") var id: Int64
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let deployment = try await global.client().call(.GET, "/v1/deployments/\(id)")
            if global.json { printJSON(deployment); return }
            let terminal = Terminal.current
            Out.line(terminal.bold("Deployment \(id)") + " of \(deployment["team"]?.text ?? "")/\(deployment["app"]?.text ?? ""): \(deployment["state"]?.text ?? "")")
            if let reason = deployment["reason"]?.stringValue { Out.line("  why      \(reason)") }
            if case .object(let stages)? = deployment["stages"] {
                for stage in ["build", "push", "apply", "wait", "cleanup"] {
                    guard let timing = stages[stage] else { continue }
                    let start = parseDate(timing["started_at"]), end = parseDate(timing["finished_at"])
                    let took = start.flatMap { s in end.map { Format.seconds($0.timeIntervalSince(s)) } } ?? "running"
                    Out.line("  \(stage.padding(toLength: 8, withPad: " ", startingAt: 0)) \(took)")
                }
            }
            if let image = deployment["image_ref"]?.stringValue {
                Out.line("  image    \(image)\(deployment["redeploy_of"]?.int.map { " (deployment \($0)'s, run again: no build)" } ?? "")")
            }
            if let url = deployment["url"]?.stringValue { Out.line("  url      \(url)") }
            if deployment["state"]?.text == "failed" { ReportPrinter.print(deployment, terminal: terminal) }
        }
    }
}

/// `loco cancel [ID]`: the given deployment, or the app's one in flight.
struct Cancel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cancel a deployment (default: the app's one in flight).")
    @Argument(help: "The deployment's id.") var id: Int64?
    @OptionGroup var app: AppOptions
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let client = try global.client()
        var target = id
        if target == nil {
            let status = try await client.call(.GET, try app.path("/status"))
            target = status["in_flight"]?["id"]?.int
            guard target != nil else { throw CLIError("nothing_in_flight", "no deployment of this app is in flight", hint: "See 'loco deployments'.") }
        }
        let deployment = try await client.call(.POST, "/v1/deployments/\(target!)/cancel")
        if global.json { printJSON(deployment) } else { Out.line("Cancelled deployment \(target!) (\(deployment["state"]?.text ?? "cancelled")).") }
    }
}

/// `loco logs`: the app's output from the runtime, or a deployment's build output.
struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The app's logs (--follow to keep watching; on a terminal, space freezes and unfreezes the display).",
        subcommands: [Yank.self])
    @Flag(name: .shortAndLong, help: "Keep the stream open and show new lines as they come.") var follow = false
    @Option(help: "Only lines since a time (RFC 3339) or a duration back (30s, 10m, 2h, 1d).") var since: String?
    @Option(help: "The last N lines of each container.") var tail: Int?
    @Option(name: .shortAndLong, help: "Only this service's lines (an app with several [[services]]).") var service: String?
    @Option(help: "A deployment's build output instead of the app's logs.") var deployment: Int64?
    @OptionGroup var app: AppOptions
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let client = try global.client()
        if let deployment {
            for line in try await BuildLog.lines(client, deployment: deployment) {
                if global.json { printJSON(line, compact: true) } else { Out.line(line["message"]?.text ?? "") }
            }
            return
        }
        var query: [String: String] = [:]
        if follow { query["follow"] = "true" }
        if let since { query["since"] = since }
        if let tail { query["tail"] = String(tail) }
        if let service { query["service"] = service }
        let freezer = follow && !global.json && Terminal.stdinIsTTY && Terminal.current.isTTY ? Freezer() : nil
        freezer?.start()
        defer { freezer?.restore() }
        try await AppLog.stream(client, path: try app.path("/logs", query: query)) { line in
            let text = global.json ? line.jsonText : Self.human(line)
            if let freezer { freezer.emit(text) } else { Out.line(text) }
        }
    }

    static func human(_ line: JSONValue) -> String {
        let terminal = Terminal.current
        let name = (line["service"]?.text ?? "") + Self.replicaSuffix(line["replica"]?.int)
        // Loco's own lines (a restart, a back-off) as Heroku marks its own: `loco[web]`.
        if line["source"]?.stringValue == "loco" {
            return terminal.dim("\(line["at"]?.text ?? "") ") + terminal.cyan("loco[\(name)]") + terminal.dim(" │ ") + (line["line"]?.text ?? "")
        }
        return terminal.dim("\(line["at"]?.text ?? "") ") + terminal.yellow(name) + terminal.dim(" │ ") + (line["line"]?.text ?? "")
    }

    /// A second or later replica's lines are marked as its container is named: `web.r2`.
    static func replicaSuffix(_ replica: Int64?) -> String {
        guard let replica, replica > 1 else { return "" }
        return ".r\(replica)"
    }

    /// `loco logs yank`: everything available, as one JSON array.
    struct Yank: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The whole available log as one JSON array (stdout, or -o FILE).")
        @Option(name: [.customShort("o"), .customLong("output")], help: "Write to this file instead of stdout.") var outputFile: String?
        @Option(help: "The Loco API (default: $LOCO_API or the saved one).") var api: String?
        @Option(help: "A token to use instead of the saved one.") var token: String?
        @Flag(help: "Write a log of every request to a file and print its path.") var debug = false
        @OptionGroup var app: AppOptions

        func run() async throws {
            // Always JSON, so -o names the file here; the connection options are the usual ones.
            let global = try GlobalOptions.parse((api.map { ["--api", $0] } ?? []) + (token.map { ["--token", $0] } ?? []) + (debug ? ["--debug"] : []))
            var lines: [JSONValue] = []
            try await AppLog.stream(try global.client(), path: try app.path("/logs")) { lines.append($0) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let data = try encoder.encode(JSONValue.array(lines))
            if let outputFile {
                try data.write(to: URL(fileURLWithPath: outputFile))
                Out.error("Wrote \(lines.count) lines to \(outputFile).")
            } else {
                Out.line(String(decoding: data, as: UTF8.self))
            }
        }
    }
}

/// The NDJSON log stream of `GET /v1/apps/{app}/logs`.
enum AppLog {
    static func stream(_ client: APIClient, path: String, _ each: (JSONValue) throws -> Void) async throws {
        var request = HTTPClientRequest(url: client.base + path)
        client.authorize(&request)
        let response = try await client.send(request, timeout: .hours(24))
        if response.status.code >= 400 { try client.check(response.status, try await client.collect(response, limit: 1 << 20)) }
        var pending = Data()
        for try await chunk in response.body {
            pending.append(contentsOf: chunk.readableBytesView)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex..<newline]
                pending = Data(pending[pending.index(after: newline)...])
                if let value = try? JSONDecoder().decode(JSONValue.self, from: line) { try each(value) }
            }
        }
    }
}

/// A deployment's build output: its `build_output` events.
enum BuildLog {
    static func lines(_ client: APIClient, deployment: Int64) async throws -> [JSONValue] {
        var request = HTTPClientRequest(url: client.base + "/v1/deployments/\(deployment)/events")
        client.authorize(&request)
        request.headers.add(name: "Accept", value: "text/event-stream")
        let response = try await client.send(request, timeout: .hours(1))
        if response.status.code >= 400 { try client.check(response.status, try await client.collect(response, limit: 1 << 20)) }
        var parser = SSEParser()
        var lines: [JSONValue] = []
        for try await chunk in response.body {
            for event in parser.feed(chunk) {
                if event.type == "end" { return lines }
                if event.type == "build_output", let data = JSONValue.parse(event.data) { lines.append(data) }
            }
        }
        return lines
    }
}

/// While following logs on a terminal, space (or f) freezes the display; lines that arrive
/// meanwhile are kept and shown on unfreeze, none lost.
final class Freezer: Sendable {
    private let state = NIOLockedValueBox((frozen: false, held: [String]()))
    private let saved = NIOLockedValueBox<termios?>(nil)

    func start() {
        var original = termios()
        guard tcgetattr(STDIN_FILENO, &original) == 0 else { return }
        saved.withLockedValue { $0 = original }
        var raw = original
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO)
        tcsetattr(STDIN_FILENO, TCSANOW, &raw)
        Out.error(Terminal.current.dim("(space: freeze/unfreeze, Ctrl-C: quit)"))
        Thread.detachNewThread { [self] in
            var byte: UInt8 = 0
            while read(STDIN_FILENO, &byte, 1) == 1 {
                if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "f") { toggle() }
            }
        }
        signal(SIGINT) { _ in
            if let original = Freezer.restoreOnExit { var copy = original; tcsetattr(STDIN_FILENO, TCSANOW, &copy) }
            _exit(0)
        }
        Freezer.restoreOnExit = original
    }

    nonisolated(unsafe) static var restoreOnExit: termios?

    func toggle() {
        let (frozen, held) = state.withLockedValue { value -> (Bool, [String]) in
            value.frozen.toggle()
            defer { if !value.frozen { value.held = [] } }
            return (value.frozen, value.held)
        }
        if frozen {
            Out.line(Terminal.current.yellow("── frozen: new lines are kept; space to unfreeze ──"))
        } else {
            Out.line(Terminal.current.yellow("── unfrozen: \(held.count) line\(held.count == 1 ? "" : "s") arrived meanwhile ──"))
            for line in held { Out.line(line) }
        }
    }

    func emit(_ line: String) {
        let shown = state.withLockedValue { value -> Bool in
            if value.frozen { value.held.append(line); return false }
            return true
        }
        if shown { Out.line(line) }
    }

    func restore() {
        if var original = saved.withLockedValue({ $0 }) { tcsetattr(STDIN_FILENO, TCSANOW, &original) }
    }
}
