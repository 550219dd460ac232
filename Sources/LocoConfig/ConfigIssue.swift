import LocoShared

/// One thing wrong with a loco.toml: which key, on which line, what is wrong, what is allowed.
public struct ConfigIssue: Sendable, Equatable, Codable, CustomStringConvertible {
    /// Dotted path: `run.port`, `services[1].name`; empty for the file as a whole.
    public var key: String
    /// 1-based line in loco.toml, when the config came from a file.
    public var line: Int?
    public var problem: String
    public var allowed: String

    public init(key: String, line: Int? = nil, problem: String, allowed: String) {
        self.key = key
        self.line = line
        self.problem = problem
        self.allowed = allowed
    }

    /// `run.port: 80 is below 1024 (line 7); use a port between 1024 and 65535`
    public var description: String {
        let location = line.map { " (line \($0))" } ?? ""
        let subject = key.isEmpty ? "" : "\(key): "
        return "\(subject)\(problem)\(location); \(allowed)"
    }
}

/// A config that cannot be used, with every issue found (not just the first).
public struct ConfigError: CodedError, Equatable {
    public enum Kind: String, Sendable { case invalid = "config_invalid", unreadable = "config_unreadable", tooNew = "config_too_new" }
    public var kind: Kind
    public var file: String
    public var issues: [ConfigIssue]

    public init(kind: Kind = .invalid, file: String, issues: [ConfigIssue]) {
        self.kind = kind
        self.file = file
        self.issues = issues
    }

    public var code: String { kind.rawValue }
    public var message: String {
        switch kind {
        case .unreadable: return issues.first.map { "\(file) cannot be read: \($0.problem)" } ?? "\(file) cannot be read"
        case .tooNew: return "\(file) is written for a newer loco (\(issues.first?.problem ?? ""))"
        case .invalid:
            let count = issues.count == 1 ? "1 problem" : "\(issues.count) problems"
            return "\(file) has \(count):\n" + issues.map { "  \($0)" }.joined(separator: "\n")
        }
    }
    public var hint: String {
        switch kind {
        case .unreadable: return issues.first?.allowed ?? "Check the file exists and is TOML."
        case .tooNew: return "Upgrade loco to a version that reads this format, or set version = \(AppConfig.formatVersion)."
        case .invalid: return "Fix the keys above and run 'loco validate' again; 'loco config show' prints every setting with its default."
        }
    }
}
