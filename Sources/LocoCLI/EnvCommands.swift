import ArgumentParser
import Foundation
import NIOHTTP1
import LocoShared

/// `loco env list|set|unset|import`.
struct Env: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The app's environment variables (values stay hidden unless --reveal).",
                                                    subcommands: [List.self, Set.self, Unset.self, Import.self], defaultSubcommand: List.self)

    /// Sets several variables at once (`PUT /v1/apps/{app}/env`); answers the names, values hidden.
    static func store(_ vars: [String: String], app: AppOptions, global: GlobalOptions) async throws -> JSONValue {
        try await global.client().call(.PUT, try app.path("/env"), json: .object(["vars": .object(vars.mapValues(JSONValue.string))]))
    }

    /// After a change: a serving app runs its version again with them (`loco restart`), as
    /// `heroku config:set` and `fly secrets set` do, unless `--stage`; an app that serves nothing
    /// yet gets them at its first deploy. `-o json`: the variables and the restart's deployment.
    static func rollOut(_ list: JSONValue, saying what: String, _ rollout: RolloutOptions, app: AppOptions, global: GlobalOptions) async throws {
        let client = try global.client()
        let name = try app.resolve().app
        let serving = try await client.call(.GET, try app.path("/status"))["current"]?["id"]?.int
        let items = JSONValue.array(list.items)
        guard let serving, !rollout.stage else {
            if global.json { printJSON(.object(["items": items, "deployment": .null])); return }
            Out.line("\(what). " + (serving == nil ? "They apply from the app's first deploy ('loco deploy')."
                                                    : "Staged: they apply from the next deploy or 'loco restart'."))
            return
        }
        if !global.json { Out.line("\(what).") }
        do {
            try await Redeploy(start: rollout.start, global: global, wrapJSON: { .object(["items": items, "deployment": $0]) })
                .run(client, of: serving, saying: "Restarting \(name) so they apply (deployment \(serving)'s images)", reason: "env: " + what.prefix(1).lowercased() + what.dropFirst())
        } catch let error as CLIError where error.code == "deployment_in_progress" {
            throw CLIError(error.code, "saved, but \(name) cannot restart now: \(error.message)",
                           hint: "Run 'loco restart' once it ends, or add --queue to restart after it.", exit: error.exit)
        }
    }

    struct RolloutOptions: ParsableArguments {
        @Flag(help: "Only save them: the running version keeps its env until the next deploy or 'loco restart'.") var stage = false
        @OptionGroup var start: StartOptions
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Names, and values with --reveal if you may see them.")
        @Flag(help: "Show values (the app's owner and the team's owners and admins).") var reveal = false
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let list = try await global.client().call(.GET, try app.path("/env", query: reveal ? ["reveal": "true"] : [:]))
            if global.json { printJSON(list); return }
            if list.items.isEmpty { Out.line("No variables. Set some with: loco env set NAME=value"); return }
            for variable in list.items { Out.line("\(variable["name"]?.text ?? "")=\(reveal ? variable["value"]?.text ?? "" : "••••••")") }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set variables and run the serving version again with them: loco env set NAME=value OTHER=value (--stage: only save).")
        @Argument(help: "NAME=value pairs.") var pairs: [String]
        @OptionGroup var rollout: RolloutOptions
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            var vars: [String: String] = [:]
            for pair in pairs {
                guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                    throw CLIError("invalid_pair", "'\(pair.prefix(40))' is not NAME=value", hint: "Write loco env set NAME=value.")
                }
                let name = String(pair[..<equals])
                guard NameRules.isEnvName(name) else {
                    throw CLIError("invalid_env_name", "'\(name.prefix(40))' is not a variable name", hint: "Use letters, digits and '_', not starting with a digit.")
                }
                vars[name] = String(pair[pair.index(after: equals)...])
            }
            let list = try await Env.store(vars, app: app, global: global)
            try await Env.rollOut(list, saying: "Set \(vars.keys.sorted().joined(separator: ", "))", rollout, app: app, global: global)
        }
    }

    struct Unset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove variables and run the serving version again without them (--stage: only save).")
        @Argument(help: "Names.") var names: [String]
        @OptionGroup var rollout: RolloutOptions
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let client = try global.client()
            for name in names { try await client.call(.DELETE, try app.path("/env/\(APIClient.escape(name))")) }
            let list = try await client.call(.GET, try app.path("/env"))
            try await Env.rollOut(list, saying: "Unset \(names.joined(separator: ", "))", rollout, app: app, global: global)
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set every variable of a .env file and run the serving version again with them (--stage: only save).")
        @Argument(help: "The dotenv file.") var file: String
        @OptionGroup var rollout: RolloutOptions
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let vars = try DotEnv.read(file)
            guard !vars.isEmpty else { throw CLIError("empty_env_file", "\(file) sets no variables", hint: "Write NAME=value lines.") }
            let list = try await Env.store(vars, app: app, global: global)
            try await Env.rollOut(list, saying: "Imported \(vars.count) variable\(vars.count == 1 ? "" : "s") from \(file)", rollout, app: app, global: global)
        }
    }
}

/// `.env` files: `NAME=value`, `export NAME=value`, quotes, `#` comments. Errors name the line.
enum DotEnv {
    static func read(_ path: String) throws -> [String: String] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CLIError("env_file_unreadable", "cannot read \(path)", hint: "Check the path; it is relative to the current folder (env_file in loco.toml: to loco.toml's folder).")
        }
        return try parse(text, file: path)
    }

    static func parse(_ text: String, file: String) throws -> [String: String] {
        var vars: [String: String] = [:]
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = String(line.dropFirst(7)).trimmingCharacters(in: .whitespaces) }
            guard let equals = line.firstIndex(of: "=") else {
                throw CLIError("invalid_env_file", "\(file) line \(index + 1) is not NAME=value", hint: "Write NAME=value, one per line.")
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            guard NameRules.isEnvName(name) else {
                throw CLIError("invalid_env_file", "\(file) line \(index + 1): '\(name.prefix(40))' is not a variable name", hint: "Use letters, digits and '_'.")
            }
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
                if first == "\"" { value = value.replacingOccurrences(of: "\\n", with: "\n").replacingOccurrences(of: "\\\"", with: "\"") }
            } else if let hash = value.range(of: " #") {
                value = value[..<hash.lowerBound].trimmingCharacters(in: .whitespaces)
            }
            vars[name] = value
        }
        return vars
    }
}
