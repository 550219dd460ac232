import ArgumentParser
import Foundation
import LocoConfig
import NIOHTTP1
import LocoShared

/// `loco login`: checks a token against the API and saves it (0600) with the API address.
struct Login: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Save a token for this machine (checked against the API first).")
    @Flag(help: "Read the token from stdin (for scripts): echo $TOKEN | loco login --with-token") var withToken = false
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        var token = global.token
        if token == nil && withToken { token = readLine(strippingNewline: true)?.trimmingCharacters(in: .whitespaces) }
        if token == nil, let environment = ProcessInfo.processInfo.environment["LOCO_TOKEN"], !environment.isEmpty { token = environment }
        if token == nil, Terminal.stdinIsTTY {
            Out.line("Create a personal token with 'locod admin create-token --user EMAIL' (operators) or 'loco token create' on a logged-in machine.")
            token = String(cString: getpass("Token: ")).trimmingCharacters(in: .whitespaces)
        }
        guard let token, !token.isEmpty else {
            throw CLIError("token_missing", "no token given", hint: "Pass --token TOKEN, pipe one with --with-token, or run 'loco login' on a terminal.")
        }
        var options = global
        options.token = token
        let client = try options.client()
        let me = try await client.call(.GET, "/v1/whoami")
        let email = me["user"]?["email"]?.stringValue
        try Credentials(api: client.base, token: token, email: email, caCert: client.caCert).save()
        if global.json {
            printJSON(.object(["api": .string(client.base), "user": me["user"] ?? .null, "token_kind": me["token_kind"] ?? .null, "file": .string(Credentials.file.path)]))
        } else {
            Out.line(Terminal.current.green("✔") + " Logged in to \(client.base) as \(email ?? me["token_kind"]?.text ?? "?") (token saved in \(Credentials.file.path))")
        }
    }
}

struct Logout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Forget the saved token.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let removed = Credentials.remove()
        if global.json { printJSON(.object(["logged_out": .bool(removed)])) }
        else { Out.line(removed ? "Logged out (removed \(Credentials.file.path))." : "Not logged in; nothing to remove.") }
    }
}

struct Whoami: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Who the token belongs to, and their teams.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let client = try global.client()
        let me = try await client.call(.GET, "/v1/whoami")
        if global.json { printJSON(me); return }
        let user = me["user"].map { "\($0["name"]?.text ?? "") <\($0["email"]?.text ?? "")>" } ?? me["worker"]?.text ?? "-"
        Out.line("\(user) — \(me["token_kind"]?.text ?? "?") token, API \(client.base)")
        for membership in me["teams"]?.items ?? [] {
            Out.line("  team \(membership["team"]?["name"]?.text ?? "?"): \(membership["role"]?.text ?? "?")")
        }
        if let app = me["app"], case .object = app { Out.line("  app \(app["team"]?.text ?? "")/\(app["name"]?.text ?? "")") }
    }
}

/// `loco token create|list|revoke`.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", abstract: "Personal tokens, and deploy tokens for CI.",
                                                    subcommands: [Create.self, List.self, Revoke.self], defaultSubcommand: List.self)

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token; its secret is printed once.")
        @Option(help: "personal, deploy (one app, 5 minutes: for CI) or pull.") var kind = "personal"
        @Option(help: "A name to recognise it by.") var name: String?
        @Option(help: "Days until it expires (personal tokens).") var days: Int?
        @OptionGroup var app: AppOptions
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let client = try global.client()
            var body: [String: JSONValue] = ["kind": .string(kind), "name": .string(name ?? "\(kind) token from loco")]
            if kind == "deploy" || kind == "pull" {
                let (appName, team) = try app.resolve()
                body["app"] = .string(appName)
                if let team { body["team"] = .string(team) }
            }
            if let days { body["expires_in"] = .number(Double(days) * 86_400) }
            let created = try await client.call(.POST, "/v1/tokens", json: .object(body))
            if global.json { printJSON(created); return }
            Out.line(created["secret"]?.text ?? "")
            let expires = created["token"]?["expires_at"]?.stringValue.map { " — expires \($0)" } ?? ""
            Out.error("token \(created["token"]?["id"]?.text ?? "") (\(kind))\(expires); shown once, keep it somewhere safe")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Your tokens (never their secrets).")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let list = try await global.client().call(.GET, "/v1/tokens")
            if global.json { printJSON(list); return }
            for token in list.items {
                let state = token["revoked_at"]?.stringValue != nil ? "revoked" : token["expires_at"]?.stringValue.map { "expires \($0)" } ?? "no expiry"
                Out.line("\(token["id"]?.text ?? "")\t\(token["kind"]?.text ?? "")\t\(token["name"]?.text ?? "")\t\(token["hint"]?.text ?? "")\t\(state)")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token at once.")
        @Argument(help: "The token's id (from 'loco token list').") var id: Int64
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            try await global.client().call(.DELETE, "/v1/tokens/\(id)")
            if global.json { printJSON(.object(["revoked": .number(Double(id))])) } else { Out.line("Revoked token \(id).") }
        }
    }
}

struct Apps: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Your apps; create one before its first deploy.",
        subcommands: [List.self, Create.self], defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Your apps, in every team you are in.")
        @Option(help: "Only this team's apps.") var team: String?
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let list = try await global.client().call(.GET, "/v1/apps" + queryString(team.map { ["team": $0] } ?? [:]))
            if global.json { printJSON(list); return }
            if list.items.isEmpty { Out.line("No apps yet: run 'loco init' and 'loco deploy' in an app's folder."); return }
            for app in list.items { Out.line("\(app["team"]?.text ?? "")/\(app["name"]?.text ?? "")\t\(app["type"]?.text ?? "")") }
        }
    }

    /// `fly apps create`: an app that exists before its first deploy can have its env vars set
    /// first, so that deploy already starts with them ('loco deploy' creates the app otherwise).
    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an app without deploying it, e.g. to set its env vars before its first deploy.",
            discussion: "Without NAME, loco.toml's name, team and type are used.")
        @Argument(help: "The app's name (default: loco.toml's name).") var name: String?
        @Option(help: "service, static, redis, postgres or blob (default: loco.toml's type, else service).") var type: String?
        @Option(help: "Path to loco.toml, when NAME is not given (default: the nearest one from the current folder up).") var config: String?
        @OptionGroup var team: TeamOption
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let client = try global.client()
            var body: [String: JSONValue] = [:]
            if let name {
                guard NameRules.isDNSLabel(name) else {
                    throw CLIError("invalid_name", "\"\(name.prefix(80))\" is not a valid app name", hint: "Use \(NameRules.labelRule).")
                }
                body["name"] = .string(name)
                body["team"] = .string(try await team.resolve(client))
            } else {
                let loaded: AppConfig
                do {
                    loaded = try loadConfig(config).config
                } catch let error as CLIError where error.code == "config_not_found" {
                    throw CLIError(error.code, error.message, hint: "Name the app ('loco apps create NAME'), or run this in the app's folder or with --config PATH.")
                }
                body["name"] = .string(loaded.name)
                body["type"] = .string(loaded.type)
                if let named = team.team ?? loaded.team {
                    body["team"] = .string(named)
                } else {
                    body["team"] = .string(try await team.resolve(client))
                }
            }
            if let type { body["type"] = .string(type) }
            let created = try await client.call(.POST, "/v1/apps", json: .object(body))
            if global.json { printJSON(created); return }
            let app = created["name"]?.text ?? ""
            let flag = name == nil ? "" : " --app \(app)"
            Out.line("Created app \(created["team"]?.text ?? "")/\(app) (\(created["type"]?.text ?? "")).")
            Out.line("Set its env vars with 'loco env set\(flag) KEY=value'; 'loco deploy' runs it.")
        }
    }
}

struct Destroy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete an app: its containers, images, deployments and env.")
    @Flag(help: "Do not ask for confirmation.") var yes = false
    @OptionGroup var app: AppOptions
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let (name, _) = try app.resolve()
        if !yes {
            guard Terminal.stdinIsTTY else {
                throw CLIError("confirmation_needed", "destroying \(name) needs a confirmation", hint: "Run it on a terminal, or pass --yes.")
            }
            guard prompt("Type the app's name to delete \(name) and everything it runs") == name else {
                throw CLIError("not_confirmed", "the name did not match; nothing was deleted", hint: "Type the app's name exactly, or pass --yes.", exit: .cancelled)
            }
        }
        try await global.client().call(.DELETE, try app.path())
        if global.json { printJSON(.object(["deleted": .string(name)])) } else { Out.line("Deleted \(name); its containers and images are being removed.") }
    }
}

struct Completion: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a shell completion script: loco completion bash > /etc/bash_completion.d/loco")
    @Argument(help: "bash, zsh or fish.") var shell: String

    func run() async throws {
        guard let kind = CompletionShell(rawValue: shell) else {
            throw CLIError("unknown_shell", "'\(shell)' is not a shell loco completes", hint: "Use bash, zsh or fish.")
        }
        Out.line(Loco.completionScript(for: kind))
    }
}
