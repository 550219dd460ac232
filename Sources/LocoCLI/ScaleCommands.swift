import ArgumentParser
import Foundation
import LocoShared
import NIOHTTP1

/// `loco scale show|count|reset`: replicas per service, as `fly scale count` and
/// `heroku ps:scale`. A count set here holds for every later deploy, rollback and restart,
/// over loco.toml's `min_replicas`, until `loco scale reset`.
struct Scale: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "How many replicas each service runs ('loco scale count 3' holds over loco.toml's min_replicas until 'loco scale reset').",
        subcommands: [Show.self, Count.self, Reset.self], defaultSubcommand: Show.self)

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each service's replicas: what the next rollout runs, who set it, what runs now.")
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let list = try await global.client().call(.GET, try app.path("/scale"))
            if global.json { printJSON(list); return }
            Scale.printCounts(list.items, app: try app.resolve().app)
        }
    }

    struct Count: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run N replicas of a service from now on: 'loco scale count 3 [--service web]'.",
            discussion: "A serving app rolls it out at once: a new deployment of the serving version, without a build, followed like a deploy (exit codes as for 'loco deploy'). An app that serves nothing yet runs it from its first deploy.")
        @Argument(help: "How many replicas (1-100).") var replicas: Int
        @Option(name: .shortAndLong, help: "The service (needed when the app has several).") var service: String?
        @OptionGroup var start: StartOptions
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            // Checked here, not in validate(), so the error keeps its hint and exit code 2.
            guard (1...100).contains(replicas) else {
                throw CLIError("invalid_replicas", "\(replicas) replicas is out of range", hint: "Give a whole number from 1 to 100; 'loco destroy' removes an app.")
            }
            var body: [String: JSONValue] = ["replicas": .number(Double(replicas))]
            if let service { body["service"] = .string(service) }
            let started = Date()
            let answer = try await global.client().call(.PUT, try app.path("/scale", query: start.waitInLine ? ["queue": "true"] : [:]), json: .object(body))
            try await Scale.report(answer, start: start, global: global, app: try app.resolve().app, started: started)
        }
    }

    struct Reset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Back to loco.toml's min_replicas (one service with --service, else all).",
            discussion: "Rolled out at once when the serving version runs another count, as 'loco scale count' does.")
        @Option(name: .shortAndLong, help: "Only this service.") var service: String?
        @OptionGroup var start: StartOptions
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            var query: [String: String] = [:]
            if let service { query["service"] = service }
            if start.waitInLine { query["queue"] = "true" }
            let started = Date()
            let answer = try await global.client().call(.DELETE, try app.path("/scale", query: query))
            try await Scale.report(answer, start: start, global: global, app: try app.resolve().app, started: started)
        }
    }

    /// Follows the deployment that rolls a change out, or says why there is none.
    static func report(_ answer: JSONValue, start: StartOptions, global: GlobalOptions, app: String, started: Date) async throws {
        if let deployment = answer["deployment"], case .object = deployment {
            let what = answer.items.map { "\($0["service"]?.text ?? "") \(replicas($0["replicas"]?.int ?? 1))" }.joined(separator: ", ")
            let items = JSONValue.array(answer.items)
            try await DeploymentWatch(global: global, start: start, wrapJSON: { .object(["items": items, "deployment": $0]) })
                .follow(try global.client(), accepted: deployment, saying: "Scaling \(app): \(what) (deployment \(deployment["redeploy_of"]?.text ?? "")'s images)", started: started)
            return
        }
        if global.json { printJSON(.object(["items": .array(answer.items), "deployment": .null])); return }
        printCounts(answer.items, app: app)
        let serves = answer.items.contains { $0["running"].map { $0 != .null } ?? false }
        Out.line(serves ? "The serving version already runs these; nothing to roll out." : "\(app) serves nothing yet: its first deploy ('loco deploy') runs these.")
    }

    static func printCounts(_ items: [JSONValue], app: String) {
        if items.isEmpty { Out.line("\(app) serves nothing yet and has no count set: it runs loco.toml's min_replicas."); return }
        Out.line("SERVICE\tREPLICAS\tSET BY\tRUNNING NOW")
        for item in items {
            let running = item["running"].flatMap { $0 == .null ? nil : $0.text } ?? "-"
            Out.line("\(item["service"]?.text ?? "")\t\(item["replicas"]?.text ?? "")\t\(item["source"]?.text ?? "")\t\(running)")
        }
    }

    static func replicas(_ count: Int64) -> String { "\(count) replica\(count == 1 ? "" : "s")" }
}
