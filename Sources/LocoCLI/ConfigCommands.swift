import ArgumentParser
import Foundation
import LocoConfig
import LocoShared

/// `loco init`: writes a loco.toml for the app in this folder.
struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a loco.toml for the app in this folder (asks on a terminal, flags otherwise).")

    @Option(help: "The app's name (default: this folder's name).") var name: String?
    @Option(help: "The port the app listens on (default: the Dockerfile's EXPOSE, else 8080).") var port: Int?
    @Option(help: "The Dockerfile (default: Dockerfile).") var dockerfile: String?
    @Option(help: "The health path the app answers when ready.") var health: String?
    @Option(help: "The team that owns the app (when you are in several).") var team: String?
    @Flag(help: "Overwrite an existing loco.toml.") var force = false
    @Flag(help: "Never ask; use flags and what is detected.") var nonInteractive = false
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let folder = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        let file = folder.appending(path: ConfigLoader.fileName)
        if FileManager.default.fileExists(atPath: file.path) && !force {
            throw CLIError("config_exists", "\(file.path) already exists", hint: "Edit it, or run 'loco init --force' to write a new one.")
        }
        let detectedDockerfile = dockerfile ?? (FileManager.default.fileExists(atPath: folder.appending(path: "Dockerfile").path) ? "Dockerfile" : nil)
        let exposed = detectedDockerfile.flatMap { Self.exposedPort(in: folder.appending(path: $0)) }
        let folderName = Self.suggestedName(folder.lastPathComponent)
        var name = self.name ?? folderName
        var port = self.port ?? exposed ?? 8080
        var health = self.health ?? "/"
        let interactive = Terminal.stdinIsTTY && Terminal.current.isTTY && !nonInteractive && !global.json
        if interactive {
            Out.line("Setting up \(Terminal.current.bold(folder.path)) for Loco.")
            if let detectedDockerfile { Out.line("Found \(detectedDockerfile)\(exposed.map { " (EXPOSE \($0))" } ?? "").") }
            else { Out.line(Terminal.current.yellow("No Dockerfile here yet: loco deploy builds from one.")) }
            name = prompt("App name", default: name) ?? name
            if let answer = prompt("Port the app listens on", default: String(port)), let number = Int(answer) { port = number }
            health = prompt("Health path (answers 200 when ready)", default: health) ?? health
        }
        var text = """
            # Loco app config (README.md, "loco.toml"); `loco config show` prints every setting with its default
            version = 1
            name = "\(name)"

            """
        if let team { text += "team = \"\(team)\"\n" }
        if let dockerfile = detectedDockerfile, dockerfile != "Dockerfile" { text += "\n[build]\ndockerfile = \"\(dockerfile)\"\n" }
        text += "\n[run]\nport = \(port)\nhealth = \"\(health)\"\n"
        // Check what we are about to write with the same rules as 'loco validate'.
        do { _ = try ConfigLoader.parse(toml: text) } catch {
            throw CLIError(error.code, error.message, hint: "Pass valid values, e.g. loco init --name my-app --port 8080.")
        }
        try text.write(to: file, atomically: true, encoding: .utf8)
        if global.json {
            printJSON(.object(["file": .string(file.path), "name": .string(name), "port": .number(Double(port)), "dockerfile": detectedDockerfile.map(JSONValue.string) ?? .null]))
        } else {
            Out.line(Terminal.current.green("✔") + " Wrote \(file.path)")
            if detectedDockerfile == nil { Out.line("Next: add a Dockerfile, then run 'loco deploy'.") } else { Out.line("Next: loco deploy") }
        }
    }

    /// The first `EXPOSE` port of the final stage.
    static func exposedPort(in dockerfile: URL) -> Int? {
        guard let text = try? String(contentsOf: dockerfile, encoding: .utf8) else { return nil }
        var port: Int?
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = words.first?.uppercased() else { continue }
            if first == "FROM" { port = nil }
            if first == "EXPOSE", words.count > 1, port == nil { port = Int(words[1].split(separator: "/")[0]) }
        }
        return port
    }

    static func suggestedName(_ folder: String) -> String {
        var name = String(folder.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }.prefix(63))
        while name.hasPrefix("-") || name.first?.isNumber == true { name.removeFirst() }
        while name.hasSuffix("-") { name.removeLast() }
        return NameRules.isDNSLabel(name) ? name : "my-app"
    }
}

/// `loco validate`: checks loco.toml and lists every problem.
struct Validate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check loco.toml; every problem is listed with its key, line and what is allowed.")
    @Option(help: "Path to loco.toml (default: the nearest one from the current folder up).") var config: String?
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let file: URL
        if let config { file = URL(fileURLWithPath: config) } else {
            guard let found = ConfigLoader.locate(from: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)) else {
                throw CLIError("config_not_found", "no loco.toml in this folder or any folder above it", hint: "Run 'loco init' to write one.")
            }
            file = found
        }
        do {
            let loaded = try ConfigLoader.load(file: file)
            if global.json { printJSON(.object(["valid": .bool(true), "file": .string(file.path), "config": loaded.config.json])) }
            else { Out.line(Terminal.current.green("✔") + " \(file.path) is valid (app \(loaded.config.name), \(loaded.config.effectiveServices.count) service\(loaded.config.effectiveServices.count == 1 ? "" : "s"))") }
        } catch {
            if global.json {
                let issues = error.issues.map { issue in
                    JSONValue.object(["key": .string(issue.key), "line": issue.line.map { .number(Double($0)) } ?? .null,
                                      "problem": .string(issue.problem), "allowed": .string(issue.allowed)])
                }
                printJSON(.object(["valid": .bool(false), "file": .string(file.path), "code": .string(error.code), "issues": .array(issues)]))
                throw ExitCode(ExitStatus.usage.rawValue)
            }
            throw CLIError(error.code, "\(file.path): " + error.message, hint: error.hint)
        }
    }
}

/// `loco config show`: the effective config, defaults filled in.
struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Show the effective config.", subcommands: [Show.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print loco.toml with every default filled in.")
        @Option(help: "Path to loco.toml.") var config: String?
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let loaded = try loadConfig(config)
            if global.json { printJSON(loaded.config.json); return }
            Out.line("# \(loaded.file.path), with defaults filled in")
            Out.line(TOMLWriter.render(loaded.config.json))
        }
    }
}

/// The effective config as TOML, keys in a stable order (scalars first, then tables).
enum TOMLWriter {
    static func render(_ value: JSONValue) -> String {
        guard case .object(let top) = value else { return "" }
        var lines: [String] = []
        write(top, path: "", into: &lines)
        return lines.joined(separator: "\n")
    }

    static func write(_ table: [String: JSONValue], path: String, into lines: inout [String]) {
        let order = ["version", "name", "team", "type", "env_file"]
        let keys = table.keys.sorted { (order.firstIndex(of: $0) ?? 99, $0) < (order.firstIndex(of: $1) ?? 99, $1) }
        for key in keys {
            switch table[key]! {
            case .object, .array: continue
            default: lines.append("\(bare(key)) = \(scalar(table[key]!))")
            }
        }
        for key in keys {
            let full = path.isEmpty ? bare(key) : "\(path).\(bare(key))"
            switch table[key]! {
            case .object(let sub):
                if sub.values.allSatisfy({ if case .object = $0 { return false } else { return true } }) && sub.isEmpty {
                    lines.append("")
                    lines.append("[\(full)]")
                } else {
                    lines.append("")
                    lines.append("[\(full)]")
                    write(sub, path: full, into: &lines)
                }
            case .array(let list):
                for entry in list {
                    guard case .object(let sub) = entry else { continue }
                    lines.append("")
                    lines.append("[[\(full)]]")
                    write(sub, path: full, into: &lines)
                }
            default: continue
            }
        }
    }

    static func bare(_ key: String) -> String {
        key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }) && !key.isEmpty ? key : scalar(.string(key))
    }

    static func scalar(_ value: JSONValue) -> String {
        switch value {
        case .string(let text):
            let escaped = text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
            return "\"\(escaped)\""
        case .number(let number): return number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
        case .bool(let flag): return String(flag)
        default: return "\"\""
        }
    }
}
