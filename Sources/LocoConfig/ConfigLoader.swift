import Foundation
import LocoShared
import TOMLKit

/// Reads loco.toml (or the JSON a deployment carries) into an `AppConfig`.
public enum ConfigLoader {
    public static let fileName = "loco.toml"
    /// Larger files are refused before parsing.
    public static let maxBytes = 256 * 1024

    /// A loaded config with the folder its relative paths resolve against.
    public struct Loaded: Sendable {
        public var config: AppConfig
        public var file: URL
        public var folder: URL { file.deletingLastPathComponent() }
    }

    /// Finds loco.toml in `start` or, like git, in the nearest folder above it.
    public static func locate(from start: URL) -> URL? {
        var folder = start.standardizedFileURL
        while true {
            let candidate = folder.appending(path: fileName)
            if FileManager.default.fileExists(atPath: candidate.path) { return candidate }
            let parent = folder.deletingLastPathComponent()
            if parent.path == folder.path { return nil }
            folder = parent
        }
    }

    public static func load(file: URL) throws(ConfigError) -> Loaded {
        let name = file.lastPathComponent
        let data: Data
        do { data = try Data(contentsOf: file) } catch {
            throw ConfigError(kind: .unreadable, file: name, issues: [ConfigIssue(key: "", problem: "the file does not exist or is not readable",
                                                                                 allowed: "run 'loco init' to write one, or pass --config PATH")])
        }
        guard data.count <= maxBytes else {
            throw ConfigError(kind: .unreadable, file: name, issues: [ConfigIssue(key: "", problem: "it is \(data.count) bytes, over the \(maxBytes) limit",
                                                                                 allowed: "keep loco.toml small; move data into files the app reads")])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(kind: .unreadable, file: name, issues: [ConfigIssue(key: "", problem: "it is not UTF-8 text", allowed: "save loco.toml as UTF-8")])
        }
        let folderName = file.deletingLastPathComponent().lastPathComponent.lowercased()
        return Loaded(config: try parse(toml: text, file: name, defaultName: NameRules.isDNSLabel(folderName) ? folderName : nil), file: file)
    }

    /// Parses and validates loco.toml text, reporting every problem with its line.
    public static func parse(toml text: String, file: String = fileName, defaultName: String? = nil) throws(ConfigError) -> AppConfig {
        // toml++ stops at NUL bytes and reads them as the end of the text.
        if let index = text.firstIndex(of: "\0") {
            let line = text[..<index].filter { $0 == "\n" }.count + 1
            throw ConfigError(kind: .unreadable, file: file, issues: [ConfigIssue(key: "", line: line, problem: "it contains a NUL byte on line \(line)",
                                                                                 allowed: "save loco.toml as plain text")])
        }
        if let (line, found) = KeyLines.crashingInput(in: text) {
            throw ConfigError(kind: .invalid, file: file, issues: [ConfigIssue(
                key: "", line: line, problem: "this is not valid TOML: unexpected \(found == "\n" ? "a line break" : "'\(found)'")",
                allowed: "name tables with letters, digits, '_' and '-', like [run] or [[services]]")])
        }
        let tree: JSONValue
        do {
            let table = try TOMLTable(string: text)
            guard let json = JSONValue.parse(table.convert(to: .json)) else {
                throw ConfigError(kind: .unreadable, file: file, issues: [ConfigIssue(key: "", problem: "its values cannot be read", allowed: "check the TOML syntax")])
            }
            tree = json
        } catch let error as TOMLParseError {
            let line = Int(error.source.begin.line)
            throw ConfigError(kind: .invalid, file: file, issues: [ConfigIssue(
                key: "", line: line, problem: "this is not valid TOML: \(error.description) at column \(error.source.begin.column)",
                allowed: "see https://toml.io for the syntax; strings need quotes, tables look like [run]")])
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(kind: .unreadable, file: file, issues: [ConfigIssue(key: "", problem: "\(error)", allowed: "check the TOML syntax")])
        }
        let lines = KeyLines(text)
        return try read(tree, file: file, defaultName: defaultName, lineOf: lines.line(of:))
    }

    /// Validates a config sent as JSON (what `loco deploy` uploads): the same rules, without lines.
    public static func parse(json: JSONValue, defaultName: String? = nil) throws(ConfigError) -> AppConfig {
        try read(json, file: "config", defaultName: defaultName, lineOf: { _ in nil })
    }

    static func read(_ tree: JSONValue, file: String, defaultName: String?, lineOf: @escaping (String) -> Int?) throws(ConfigError) -> AppConfig {
        if case .number(let version)? = tree["version"], version > Double(AppConfig.formatVersion) {
            throw ConfigError(kind: .tooNew, file: file, issues: [ConfigIssue(key: "version", line: lineOf("version"),
                problem: "version = \(Int(exactly: version).map(String.init) ?? String(version)); this loco reads version \(AppConfig.formatVersion)",
                allowed: "upgrade loco")])
        }
        var reader = ConfigReader(lineOf: lineOf)
        if let config = reader.read(tree, defaultName: defaultName) { return config }
        // In file order, so a reader can go down the file fixing them.
        let ordered = reader.issues.enumerated().sorted { ($0.element.line ?? .max, $0.offset) < ($1.element.line ?? .max, $1.offset) }.map(\.element)
        throw ConfigError(kind: .invalid, file: file, issues: ordered)
    }
}

/// Where each key of a TOML file is written, so issues can name their line. It follows table
/// headers (`[run]`, `[[services]]`, `[services.build]`) and `key = value` lines; keys inside
/// inline tables resolve to the line of their table.
struct KeyLines {
    private var lines: [String: Int] = [:]

    init(_ text: String) {
        var table = ""
        var arrayCounts: [String: Int] = [:]
        var inMultiline: String?
        for (offset, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = offset + 1
            let line = raw.trimmingCharacters(in: .whitespaces)
            if let delimiter = inMultiline {
                if line.contains(delimiter) { inMultiline = nil }
                continue
            }
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[[") {
                let raw = Self.header(line, open: 2)
                let parent = raw.split(separator: ".").dropLast().joined(separator: ".")
                let last = raw.split(separator: ".").last.map(String.init) ?? raw
                let name = parent.isEmpty ? last : "\(Self.normalize(parent, arrays: arrayCounts)).\(last)"
                let index = arrayCounts[name, default: -1] + 1
                arrayCounts[name] = index
                table = "\(name)[\(index)]"
                lines[name] = lines[name] ?? number
                lines[table] = number
                continue
            }
            if line.hasPrefix("[") {
                table = Self.normalize(Self.header(line, open: 1), arrays: arrayCounts)
                lines[table] = number
                continue
            }
            guard let equals = line.firstIndex(of: "=") else { continue }
            let key = Self.dotted(String(line[..<equals]))
            guard !key.isEmpty else { continue }
            lines[table.isEmpty ? key : "\(table).\(key)"] = number
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            for delimiter in ["\"\"\"", "'''"] where value.hasPrefix(delimiter) && !value.dropFirst(3).contains(delimiter) { inMultiline = delimiter }
        }
    }

    /// toml++ asserts (and, built without assertions, assumes) a few things about its input that
    /// malformed files break, crashing it: a table header whose name starts with something other
    /// than a key (`[+x]`), an array or inline table whose next item starts with a terminator
    /// (`[ }`, `[1,,2]`, `{ , }`). The fuzz test found these; this scan finds them first.
    static func crashingInput(in text: String) -> (line: Int, found: Character)? {
        enum Quote { case basic, literal, multiBasic, multiLiteral }
        let chars = Array(text.unicodeScalars)
        var line = 1, index = 0
        var quote: Quote?
        var stack: [Character] = []          // open '[' and '{' of values
        var afterEquals = false              // on a key = value line, past its '='
        var expectItem = false               // just after '[' ',' or '{' inside a value
        var lineStart = true
        func isKeyStart(_ c: Unicode.Scalar) -> Bool {
            c.isASCII && (CharacterSet.alphanumerics.contains(c) || c == "_" || c == "-" || c == "\"" || c == "'")
        }
        while index < chars.count {
            let c = chars[index]
            func next(_ n: Int) -> String { String(String.UnicodeScalarView(chars[index..<min(chars.count, index + n)])) }
            if let open = quote {
                switch open {
                case .basic: if c == "\\" { index += 1 } else if c == "\"" { quote = nil } else if c == "\n" { quote = nil }
                case .literal: if c == "'" || c == "\n" { quote = nil }
                case .multiBasic: if c == "\\" { index += 1 } else if next(3) == "\"\"\"" { quote = nil; index += 2 }
                case .multiLiteral: if next(3) == "'''" { quote = nil; index += 2 }
                }
                if index < chars.count, chars[index] == "\n" { line += 1 }
                index += 1
                continue
            }
            if c == "#" {                     // a comment runs to the end of the line
                while index < chars.count, chars[index] != "\n" { index += 1 }
                continue
            }
            if c == "\n" {
                line += 1
                if stack.isEmpty { afterEquals = false; lineStart = true }
                index += 1
                continue
            }
            if c == " " || c == "\t" || c == "\r" { index += 1; continue }
            if expectItem {
                expectItem = false
                if stack.last == "[", c == "}" || c == "," { return (line, Character(c)) }
                if stack.last == "{", !(isKeyStart(c) || c == "}") { return (line, Character(c)) }
            }
            if stack.isEmpty, !afterEquals, lineStart, c == "[" {
                // A table header: its name must start with a key character.
                var cursor = index + 1
                if cursor < chars.count, chars[cursor] == "[" { cursor += 1 }
                while cursor < chars.count, chars[cursor] == " " || chars[cursor] == "\t" { cursor += 1 }
                guard cursor < chars.count, isKeyStart(chars[cursor]) else {
                    return (line, cursor < chars.count ? Character(chars[cursor]) : "\n")
                }
                while index < chars.count, chars[index] != "\n" { index += 1 }
                continue
            }
            lineStart = false
            switch c {
            case "\"": quote = next(3) == "\"\"\"" ? .multiBasic : .basic; index += quote == .multiBasic ? 2 : 0
            case "'": quote = next(3) == "'''" ? .multiLiteral : .literal; index += quote == .multiLiteral ? 2 : 0
            case "=": afterEquals = true
            case "[" where afterEquals || !stack.isEmpty: stack.append("["); expectItem = true
            case "{" where afterEquals || !stack.isEmpty: stack.append("{"); expectItem = true; afterEquals = false
            case "]", "}": if !stack.isEmpty { stack.removeLast() }; if stack.last == "{" { afterEquals = false }
            case ",": if !stack.isEmpty { expectItem = true; if stack.last == "{" { afterEquals = false } }
            default: break
            }
            index += 1
        }
        return nil
    }

    /// The line of `key`, or of the nearest table around it.
    func line(of key: String) -> Int? {
        var path = key
        while !path.isEmpty {
            if let line = lines[path] { return line }
            if path.hasSuffix("]"), let open = path.lastIndex(of: "[") { path = String(path[..<open]); continue }
            guard let dot = path.lastIndex(of: ".") else { return nil }
            path = String(path[..<dot])
        }
        return nil
    }

    static func header(_ line: String, open: Int) -> String {
        let body = line.dropFirst(open)
        let end = body.firstIndex(of: "]") ?? body.endIndex
        return dotted(String(body[..<end]))
    }

    /// `services.build` inside the second `[[services]]` is `services[1].build`.
    static func normalize(_ name: String, arrays: [String: Int]) -> String {
        var parts: [String] = []
        var prefix = ""
        for part in name.split(separator: ".") {
            prefix = prefix.isEmpty ? String(part) : "\(prefix).\(part)"
            if let index = arrays[prefix] { parts.append("\(part)[\(index)]") } else { parts.append(String(part)) }
        }
        return parts.joined(separator: ".")
    }

    /// `"run" . port` → `run.port`; quotes removed.
    static func dotted(_ key: String) -> String {
        key.split(separator: ".").map { $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'")) }
            .joined(separator: ".")
    }
}
