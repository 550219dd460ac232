import ArgumentParser
import AsyncHTTPClient
import BuildContext
import Foundation
import NIOFoundationCompat
import NIOConcurrencyHelpers
import NIOHTTP1
import LocoConfig
import LocoShared
import NIOCore

/// `loco deploy`: pack, upload, follow the deployment live, end with the URL or the failure report.
struct Deploy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build, push and roll out the app in this folder; follow it until the new version serves.",
        discussion: "Exit code 0 only when the new version serves; 1 when the deployment failed, 5 when it was cancelled.")

    @Option(help: "Path to loco.toml (default: the nearest one from the current folder up).") var config: String?
    @OptionGroup var start: StartOptions
    @Option(name: .shortAndLong, help: "Deploy as this app instead of loco.toml's name (e.g. a staging copy of the same config).") var app: String?
    @Option(help: "The app's team (default: loco.toml's team).") var team: String?
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let loaded = try loadConfig(config)
        let config = try deployedConfig(loaded.config)
        let client = try global.client()
        let terminal = Terminal.current
        let human = !global.json
        // Pack the folder of loco.toml (its .dockerignore applies); services build from subfolders.
        var archive: URL?
        defer { if let archive { try? FileManager.default.removeItem(at: archive) } }
        var summary: ContextPacker.Summary?
        if config.isBuilt {
            let first = config.effectiveServices[0].build
            let dockerfile = (first.context == "." ? first.dockerfile : "\(first.context)/\(first.dockerfile)")
            for service in config.effectiveServices {
                let path = service.build.context == "." ? service.build.dockerfile : "\(service.build.context)/\(service.build.dockerfile)"
                guard FileManager.default.fileExists(atPath: loaded.folder.appending(path: path).path) else {
                    throw CLIError("dockerfile_not_found", "\(path) does not exist in \(loaded.folder.path)",
                                   hint: "Add a Dockerfile there, or point build.dockerfile (and build.context) in loco.toml at yours.")
                }
            }
            let file = FileManager.default.temporaryDirectory.appending(path: "loco-context-\(getpid())-\(UUID().uuidString).tar.gz")
            archive = file
            do { summary = try ContextPacker(folder: loaded.folder, dockerfile: dockerfile).pack(to: file) } catch let error as any CodedError {
                throw CLIError(error.code, "cannot pack \(loaded.folder.path): \(error.message)", hint: error.hint)
            }
            if human, let summary {
                Out.line("Packed \(summary.files) files (\(Format.bytes(summary.compressedBytes)) compressed\(summary.excluded > 0 ? ", \(summary.excluded) left out by .dockerignore" : ""))")
            }
        }

        let team = try await ensureApp(client, config)
        let teamQuery = team.map { ["team": $0] } ?? [:]
        let appPath = { (suffix: String, extra: [String: String]) in
            "/v1/apps/\(APIClient.escape(config.name))\(suffix)" + queryString(teamQuery.merging(extra) { $1 })
        }

        if let envFile = config.envFile {
            let vars = try DotEnv.read(loaded.folder.appending(path: envFile).path)
            if !vars.isEmpty {
                try await client.call(.PUT, appPath("/env", [:]), json: .object(["vars": .object(vars.mapValues(JSONValue.string))]))
                if human { Out.line("Stored \(vars.count) variable\(vars.count == 1 ? "" : "s") from \(envFile) as the app's env.") }
            }
        }

        let started = Date()
        let deployment = try await upload(client, path: appPath("/deployments", start.waitInLine ? ["queue": "true"] : [:]),
                                          config: config.json, archive: archive, human: human && terminal.isTTY)
        try await DeploymentWatch(global: global, start: start).follow(client, accepted: deployment, saying: "Deploying \(config.name)", started: started)
    }

    /// loco.toml with `--app` and `--team` applied: the names are checked here, by loco.toml's
    /// rules, so a typo is a usage error before anything is packed or sent.
    func deployedConfig(_ file: AppConfig) throws -> AppConfig {
        var config = file
        if let app {
            guard NameRules.isDNSLabel(app) else {
                throw CLIError("invalid_name", "--app \"\(app.prefix(80))\" is not a valid app name", hint: "Use \(NameRules.labelRule).")
            }
            config.name = app
        }
        if let team {
            guard NameRules.isDNSLabel(team) else {
                throw CLIError("invalid_name", "--team \"\(team.prefix(80))\" is not a team name", hint: "Use the team's name as 'loco whoami' lists it.")
            }
            config.team = team
        }
        return config
    }

    /// The app must exist; a personal token creates it on first deploy (in loco.toml's team).
    func ensureApp(_ client: APIClient, _ config: AppConfig) async throws -> String? {
        let query = queryString(config.team.map { ["team": $0] } ?? [:])
        do {
            let app = try await client.call(.GET, "/v1/apps/\(APIClient.escape(config.name))\(query)")
            return config.team ?? app["team"]?.stringValue
        } catch let error as CLIError where error.code == "not_found" {
            var body: [String: JSONValue] = ["name": .string(config.name), "type": .string(config.type)]
            if let team = config.team { body["team"] = .string(team) }
            let created = try await client.call(.POST, "/v1/apps", json: .object(body))
            if !global.json { Out.line("Created app \(created["team"]?.text ?? "")/\(config.name).") }
            return created["team"]?.stringValue
        }
    }

    /// multipart/form-data: the config (JSON) and the context, streamed with a progress bar.
    func upload(_ client: APIClient, path: String, config: JSONValue, archive: URL?, human: Bool) async throws -> JSONValue {
        let boundary = "loco-\(UUID().uuidString)"
        var head = "--\(boundary)\r\nContent-Disposition: form-data; name=\"config\"\r\nContent-Type: application/json\r\n\r\n"
        head += String(decoding: try JSONEncoder().encode(config), as: UTF8.self) + "\r\n"
        var chunks: [ByteBuffer] = []
        var total = 0
        if let archive {
            head += "--\(boundary)\r\nContent-Disposition: form-data; name=\"context\"; filename=\"context.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n"
            let data = try Data(contentsOf: archive)
            chunks.append(ByteBuffer(string: head))
            var offset = 0
            while offset < data.count {
                let end = min(data.count, offset + 256 * 1024)
                chunks.append(ByteBuffer(data: data[offset..<end]))
                offset = end
            }
            chunks.append(ByteBuffer(string: "\r\n--\(boundary)--\r\n"))
        } else {
            chunks = [ByteBuffer(string: head + "--\(boundary)--\r\n")]
        }
        total = chunks.reduce(0) { $0 + $1.readableBytes }
        let size = total
        var request = HTTPClientRequest(url: client.base + path)
        request.method = .POST
        client.authorize(&request)
        request.headers.add(name: "Content-Type", value: "multipart/form-data; boundary=\(boundary)")
        let progress = UploadProgress(total: size, show: human)
        request.body = .stream(CountedChunks(chunks: chunks, progress: progress), length: .known(Int64(size)))
        let response = try await client.send(request, timeout: .seconds(600))
        progress.done()
        let data = try await client.collect(response, limit: 16 << 20)
        try client.check(response.status, data)
        return (try? JSONDecoder().decode(JSONValue.self, from: data)) ?? .null
    }
}

/// How a command that starts a deployment (`deploy`, `rollback`, `restart`) runs it.
struct StartOptions: ParsableArguments {
    @Flag(help: "Return at once with the new deployment's id.") var detach = false
    @Flag(help: "Never ask (CI): Ctrl-C stops watching without cancelling.") var nonInteractive = false
    @Flag(name: .customLong("queue"), help: "Wait in line behind a deployment in flight instead of being refused.") var waitInLine = false
}

/// Follows a deployment to its end and says how it ended, with the exit code (`loco deploy`,
/// `loco rollback`, `loco restart`).
struct DeploymentWatch {
    let global: GlobalOptions
    let start: StartOptions
    /// What `-o json` prints instead of the bare deployment (`loco env set`: the variables too).
    var wrapJSON: @Sendable (JSONValue) -> JSONValue = { $0 }

    /// After the API took a deployment: with --detach, says how to follow it; else announces it
    /// ("Deploying shop — deployment 7") and follows it to the end.
    func follow(_ client: APIClient, accepted deployment: JSONValue, saying what: String, started: Date) async throws {
        guard let id = deployment["id"]?.int else { throw CLIError("unexpected_answer", "the API did not return a deployment id", hint: "Run with --debug.") }
        if start.detach {
            if global.json { printJSON(wrapJSON(deployment)) } else { Out.line("Deployment \(id) started. Follow it with: loco status (or loco deployment show \(id))") }
            return
        }
        if !global.json {
            let queued = deployment["queued_behind"]?.int.map { " (waits in line behind deployment \($0))" } ?? ""
            Out.line("\(what) — deployment \(id)\(queued)")
        }
        let terminal = Terminal.current
        let follower = Follower(client: client, deploymentID: id, format: global.output, terminal: terminal)
        let final = try await followInterruptibly(follower, client: client, id: id)
        try finish(final, started: started, terminal: terminal)
    }

    /// Follows until the end; Ctrl-C asks whether to cancel the deployment or just stop watching.
    func followInterruptibly(_ follower: Follower, client: APIClient, id: Int64) async throws -> JSONValue {
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT)
        let task = Task { try await follower.run() }
        source.setEventHandler { task.cancel() }
        source.resume()
        defer { source.cancel(); signal(SIGINT, SIG_DFL) }
        do {
            return try await task.value
        } catch is CancellationError {
            follower.view.stop()
            let interactive = Terminal.stdinIsTTY && Terminal.current.isTTY && !start.nonInteractive && !global.json
            if interactive, prompt("\nCancel deployment \(id) too? (y: cancel it, n: keep it running and stop watching)", default: "n")?.lowercased().hasPrefix("y") == true {
                try await client.call(.POST, "/v1/deployments/\(id)/cancel")
                Out.line("Cancelled deployment \(id).")
            } else {
                Out.error("Stopped watching; deployment \(id) goes on. See it with 'loco deployment show \(id)'; stop it with 'loco cancel \(id)'.")
            }
            throw ExitCode(ExitStatus.cancelled.rawValue)
        }
    }

    func finish(_ deployment: JSONValue, started: Date, terminal: Terminal) throws {
        let state = deployment["state"]?.text ?? "unknown"
        let id = deployment["id"]?.int ?? 0
        switch global.output {
        case .json: printJSON(wrapJSON(deployment))
        case .ndjson: printJSON(.object(["type": .string("deployment"), "deployment": deployment]), compact: true)
        case .human:
            switch state {
            case "succeeded":
                Out.line(terminal.green("✔") + " Deployed \(deployment["app"]?.text ?? "") in \(Format.seconds(Date().timeIntervalSince(started))) (deployment \(id))")
                if let url = deployment["url"]?.stringValue { Out.line("  " + terminal.bold(url)) }
            case "failed": ReportPrinter.print(deployment, terminal: terminal)
            default: Out.line(terminal.yellow("■") + " Deployment \(id) was \(state).")
            }
        }
        switch state {
        case "succeeded": return
        case "cancelled": throw ExitCode(ExitStatus.cancelled.rawValue)
        default: throw ExitCode(ExitStatus.deployFailed.rawValue)
        }
    }
}

/// The upload's progress bar (on a terminal only).
final class UploadProgress: Sendable {
    let total: Int
    let show: Bool
    private let state = NIOLockedValueBox((sent: 0, drawn: Date.distantPast))

    init(total: Int, show: Bool) {
        self.total = total
        self.show = show
    }

    func sent(_ bytes: Int) {
        guard show else { return }
        let (sent, redraw) = state.withLockedValue { value -> (Int, Bool) in
            value.sent += bytes
            let now = Date()
            let redraw = now.timeIntervalSince(value.drawn) > 0.1 || value.sent == total
            if redraw { value.drawn = now }
            return (value.sent, redraw)
        }
        guard redraw else { return }
        let width = 30, filled = total > 0 ? width * sent / total : width
        Out.raw("\rUploading [\(String(repeating: "█", count: filled))\(String(repeating: "·", count: width - filled))] \(Format.bytes(Int64(sent))) / \(Format.bytes(Int64(total)))")
    }

    func done() { if show { Out.raw("\r\u{1B}[2K") } }
}

/// The upload body: chunks handed to the client one at a time, counted as they go.
struct CountedChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let chunks: [ByteBuffer]
    let progress: UploadProgress

    struct AsyncIterator: AsyncIteratorProtocol {
        var remaining: ArraySlice<ByteBuffer>
        let progress: UploadProgress
        mutating func next() async -> ByteBuffer? {
            guard let chunk = remaining.popFirst() else { return nil }
            progress.sent(chunk.readableBytes)
            return chunk
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(remaining: chunks[...], progress: progress) }
}

/// Prints a failure report: stage, code, message, evidence, the next step.
enum ReportPrinter {
    static func print(_ deployment: JSONValue, terminal: Terminal) {
        let id = deployment["id"]?.int ?? 0
        guard let report = deployment["report"], case .object = report else {
            Out.line(terminal.red("✘") + " Deployment \(id) failed.")
            return
        }
        Out.line(terminal.red("✘") + " Deployment \(id) failed at \(report["stage"]?.text ?? "?"): " + terminal.bold(report["code"]?.text ?? "?"))
        Out.line("  \(report["message"]?.text ?? "")")
        if case .object(let evidence)? = report["evidence"], !evidence.isEmpty {
            Out.line("  evidence:")
            for key in evidence.keys.sorted() where key != "log_tail" {
                Out.line("    \(key): \(evidence[key]!.stringValue ?? evidence[key]!.jsonText)")
            }
            if case .array(let lines)? = evidence["log_tail"], !lines.isEmpty {
                Out.line("    last lines:")
                for line in lines.suffix(20) { Out.line(terminal.dim("      │ ") + line.text) }
            }
        }
        Out.line("  " + terminal.yellow("Next: ") + (report["hint"]?.text ?? ""))
    }
}
