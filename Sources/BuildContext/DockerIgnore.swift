import Foundation

/// `.dockerignore` rules with Docker's semantics: one pattern per line, `#` comments, `*` and
/// `?` within one path segment, `[...]` ranges, `**` across any number of folders, `!` to
/// re-include, the last matching line wins, and a pattern that matches a folder matches
/// everything in it.
public struct DockerIgnore: Sendable {
    struct Rule: @unchecked Sendable {
        let pattern: String
        let negated: Bool
        let regex: Regex<AnyRegexOutput>
    }

    let rules: [Rule]

    /// Nothing is excluded.
    public static let none = DockerIgnore(rules: [])

    init(rules: [Rule]) { self.rules = rules }

    public var hasExceptions: Bool { rules.contains(where: \.negated) }

    public init(parsing text: String) throws {
        var rules: [Rule] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.isEmpty || line.hasPrefix("#") { continue }
            var negated = false
            if line.hasPrefix("!") {
                negated = true
                line = String(line.dropFirst()).trimmingCharacters(in: .whitespaces)
                if line.isEmpty { continue }
            }
            let pattern = Self.clean(line)
            do {
                rules.append(Rule(pattern: pattern, negated: negated, regex: try Regex(Self.regex(for: pattern))))
            } catch {
                throw BuildContextError.invalidPattern(line: index + 1, pattern: line, reason: "\(error)")
            }
        }
        self.rules = rules
    }

    /// Whether `path` (relative, '/'-separated) is excluded.
    public func excludes(_ path: String) -> Bool {
        var excluded = false
        let parents = Self.selfAndParents(path)
        for rule in rules where parents.contains(where: { (try? rule.regex.wholeMatch(in: $0)) != nil }) {
            excluded = !rule.negated
        }
        return excluded
    }

    /// "a/b/c" → ["a/b/c", "a/b", "a"]: a pattern matching a folder matches what is inside it.
    static func selfAndParents(_ path: String) -> [String] {
        var result = [path]
        var current = Substring(path)
        while let slash = current.lastIndex(of: "/") {
            current = current[..<slash]
            result.append(String(current))
        }
        return result
    }

    /// Like Go's filepath.Clean, plus Docker's dropping of a leading '/'.
    static func clean(_ pattern: String) -> String {
        var parts: [Substring] = []
        for part in pattern.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == "..", let last = parts.last, last != ".." { parts.removeLast(); continue }
            if part == "..", pattern.hasPrefix("/") { continue }
            parts.append(part)
        }
        let joined = parts.joined(separator: "/")
        return joined.isEmpty ? "." : joined
    }

    /// Docker's translation of a pattern into an anchored regular expression.
    static func regex(for pattern: String) throws -> String {
        var result = "^"
        let characters = Array(pattern)
        var index = 0
        while index < characters.count {
            let character = characters[index]
            switch character {
            case "*":
                if index + 1 < characters.count, characters[index + 1] == "*" {
                    index += 1
                    if index + 1 < characters.count, characters[index + 1] == "/" {
                        // "**/" matches zero or more folders.
                        index += 1
                        result += "(.*/)?"
                    } else {
                        result += ".*"
                    }
                } else {
                    result += "[^/]*"
                }
            case "?":
                result += "[^/]"
            case "[":
                guard let close = characters[(index + 1)...].firstIndex(of: "]") else {
                    throw BuildContextError.invalidPattern(line: 0, pattern: pattern, reason: "'[' without ']'")
                }
                var range = String(characters[(index + 1)..<close])
                if range.hasPrefix("!") { range = "^" + range.dropFirst() }
                result += "[" + range.replacingOccurrences(of: "/", with: "") + "]"
                index = close
            case "\\":
                index += 1
                guard index < characters.count else {
                    throw BuildContextError.invalidPattern(line: 0, pattern: pattern, reason: "a trailing '\\'")
                }
                result += NSRegularExpression.escapedPattern(for: String(characters[index]))
            default:
                result += NSRegularExpression.escapedPattern(for: String(character))
            }
            index += 1
        }
        return result + "$"
    }
}
