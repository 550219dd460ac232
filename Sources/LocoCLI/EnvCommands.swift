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

    /// When changed variables reach the app: an app that serves nothing yet has nothing to restart.
    static func whenTheyApply(app: AppOptions, global: GlobalOptions) async -> String {
        let serving = try? await global.client().call(.GET, try app.path("/status"))["current"]?["id"]
        if let serving, serving != .null { return "They apply from the next deploy; 'loco restart' applies them now." }
        return "They apply from the app's first deploy ('loco deploy')."
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
        static let configuration = CommandConfiguration(abstract: "Set variables: loco env set NAME=value OTHER=value")
        @Argument(help: "NAME=value pairs.") var pairs: [String]
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
            if global.json { printJSON(list) } else { Out.line("Set \(vars.keys.sorted().joined(separator: ", ")). \(await Env.whenTheyApply(app: app, global: global))") }
        }
    }

    struct Unset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove variables.")
        @Argument(help: "Names.") var names: [String]
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let client = try global.client()
            for name in names { try await client.call(.DELETE, try app.path("/env/\(APIClient.escape(name))")) }
            if global.json { printJSON(.object(["unset": .array(names.map(JSONValue.string))])) } else { Out.line("Unset \(names.joined(separator: ", ")). The running version keeps them until the next deploy or 'loco restart'.") }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set every variable of a .env file.")
        @Argument(help: "The dotenv file.") var file: String
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let vars = try DotEnv.read(file)
            guard !vars.isEmpty else { throw CLIError("empty_env_file", "\(file) sets no variables", hint: "Write NAME=value lines.") }
            let list = try await Env.store(vars, app: app, global: global)
            if global.json { printJSON(list) } else { Out.line("Imported \(vars.count) variable\(vars.count == 1 ? "" : "s") from \(file). \(await Env.whenTheyApply(app: app, global: global))") }
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
