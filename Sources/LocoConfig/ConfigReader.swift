import LocoShared

/// Reads a config tree (from TOML or JSON) into an `AppConfig`, collecting every issue.
struct ConfigReader {
    /// Line of a dotted key in the source file, when there is one.
    let lineOf: (String) -> Int?
    var issues: [ConfigIssue] = []

    init(lineOf: @escaping (String) -> Int?) { self.lineOf = lineOf }

    static let topKeys = ["version", "name", "team", "type", "build", "run", "resources", "routing", "env", "env_file", "services"]
    static let buildKeys = ["dockerfile", "context", "target", "args"]
    static let runKeys = ["port", "health", "health_interval", "health_timeout", "start_grace"]
    static let resourceKeys = ["cpu", "memory", "min_replicas", "max_replicas", "target_cpu"]
    static let routingKeys = ["subdomain", "path"]
    static let serviceKeys = ["name", "path", "build", "run", "resources"]

    mutating func issue(_ key: String, _ problem: String, _ allowed: String) {
        issues.append(ConfigIssue(key: key, line: lineOf(key), problem: problem, allowed: allowed))
    }

    /// `defaultName` names the app when loco.toml does not (the folder's name, when it is a valid name).
    mutating func read(_ root: JSONValue, defaultName: String?) -> AppConfig? {
        guard case .object(let top) = root else {
            issue("", "the config is not a table of keys", "start from 'loco init', which writes a valid loco.toml")
            return nil
        }
        // The format version first: a newer file is not checked key by key against this format.
        if let version = top["version"] {
            guard let number = integer(version, "version", "use version = \(AppConfig.formatVersion)") else { return nil }
            if number > AppConfig.formatVersion { return nil }
            if number < 1 { issue("version", "\(number) is not a format version", "use version = \(AppConfig.formatVersion)") }
        }
        unknownKeys(top, allowed: Self.topKeys, at: "")

        var config = AppConfig(name: defaultName ?? "")
        if let value = top["name"] {
            if let name = string(value, "name", "use a lowercase name like \"my-app\"") {
                if NameRules.isDNSLabel(name) { config.name = name }
                else { issue("name", "\"\(name.prefix(80))\" is not a valid app name", "use \(NameRules.labelRule)") }
            }
        } else if defaultName == nil || !NameRules.isDNSLabel(defaultName!) {
            issue("name", "is missing", "add name = \"my-app\" (lowercase letters, digits and '-')")
        }
        if let value = top["team"], let team = string(value, "team", "use the name of one of your teams") {
            if NameRules.isDNSLabel(team) { config.team = team } else { issue("team", "\"\(team.prefix(80))\" is not a team name", "use the team's name as 'loco whoami' lists it") }
        }
        if let value = top["type"], let type = string(value, "type", "use one of \(AppConfig.appTypes.joined(separator: ", "))") {
            if AppConfig.appTypes.contains(type) { config.type = type }
            else {
                let guess = DidYouMean.suggestion(for: type, among: AppConfig.appTypes).map { "did you mean \"\($0)\"? " } ?? ""
                issue("type", "\"\(type.prefix(40))\" is not an app type", "\(guess)use one of \(AppConfig.appTypes.joined(separator: ", "))")
            }
        }
        if let value = top["build"] { config.build = readBuild(value, at: "build", base: BuildConfig()) }
        if let value = top["run"] { config.run = readRun(value, at: "run", base: RunConfig()) }
        if let value = top["resources"] { config.resources = readResources(value, at: "resources", base: ResourcesConfig()) }
        if let value = top["routing"], let table = table(value, "routing") {
            unknownKeys(table, allowed: Self.routingKeys, at: "routing")
            if let value = table["subdomain"], let subdomain = string(value, "routing.subdomain", "use a DNS label like \"shop\"") {
                if !NameRules.isDNSLabel(subdomain) {
                    issue("routing.subdomain", "\"\(subdomain.prefix(80))\" is not a DNS label", "use 1-63 lowercase letters, digits and '-'")
                } else if AppConfig.reservedSubdomains.contains(subdomain) {
                    issue("routing.subdomain", "\"\(subdomain)\" is reserved", "choose another subdomain; reserved: \(AppConfig.reservedSubdomains.sorted().joined(separator: ", "))")
                } else { config.routing.subdomain = subdomain }
            }
            if let value = table["path"], let path = pathPrefix(value, "routing.path") { config.routing.path = path }
        }
        if let value = top["env"], let table = table(value, "env") {
            for (name, value) in table.sorted(by: { $0.key < $1.key }) {
                let key = "env.\(name)"
                guard NameRules.isEnvName(name) else {
                    issue(key, "\"\(name.prefix(80))\" is not an env var name", "use letters, digits and '_', not starting with a digit")
                    continue
                }
                switch value {
                case .string(let text): config.env[name] = text
                case .number(let number): config.env[name] = number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
                case .bool(let flag): config.env[name] = String(flag)
                default: issue(key, "is \(describe(value))", "use a string, number or boolean")
                }
            }
        }
        if let value = top["env_file"], let file = string(value, "env_file", "use a path like \".env\"") {
            if file.isEmpty { issue("env_file", "is empty", "use a path like \".env\", or leave env_file out") } else { config.envFile = file }
        }
        if let value = top["services"] { config.services = readServices(value, config: config) }
        if !config.isBuilt, top["build"] != nil || top["services"] != nil {
            issue(top["build"] != nil ? "build" : "services", "\(config.type) apps are not built from a Dockerfile", "remove it, or use type = \"service\"")
        }
        return issues.isEmpty ? config : nil
    }

    mutating func readServices(_ value: JSONValue, config: AppConfig) -> [ServiceConfig] {
        guard case .array(let list) = value else {
            issue("services", "is \(describe(value))", "use [[services]] tables, one per service")
            return []
        }
        if list.isEmpty { issue("services", "is an empty list", "add [[services]] tables, or leave services out for a one-service app") }
        var services: [ServiceConfig] = []
        var names: Set<String> = [], paths: Set<String> = []
        for (index, entry) in list.enumerated() {
            let at = "services[\(index)]"
            guard let table = table(entry, at) else { continue }
            unknownKeys(table, allowed: Self.serviceKeys, at: at)
            var name = ""
            if let value = table["name"], let text = string(value, "\(at).name", "use a name like \"api\"") {
                if !NameRules.isDNSLabel(text) { issue("\(at).name", "\"\(text.prefix(80))\" is not a valid service name", "use 1-63 lowercase letters, digits and '-'") }
                else if !names.insert(text).inserted { issue("\(at).name", "\"\(text)\" is used by another service", "give every service its own name") }
                else { name = text }
            } else if table["name"] == nil { issue("\(at).name", "is missing", "add name = \"api\" to this [[services]] table") }
            var path = "/"
            if let value = table["path"] { path = pathPrefix(value, "\(at).path") ?? "/" }
            if !paths.insert(path).inserted { issue("\(at).path", "\"\(path)\" is used by another service", "give every service its own path prefix, like \"/api\"") }
            var build = BuildConfig()
            build.context = name.isEmpty ? "." : name
            if let value = table["build"] { build = readBuild(value, at: "\(at).build", base: build) }
            let run = table["run"].map { readRun($0, at: "\(at).run", base: config.run) } ?? config.run
            let resources = table["resources"].map { readResources($0, at: "\(at).resources", base: config.resources) } ?? config.resources
            services.append(ServiceConfig(name: name, path: path, build: build, run: run, resources: resources))
        }
        return services
    }

    mutating func readBuild(_ value: JSONValue, at: String, base: BuildConfig) -> BuildConfig {
        var build = base
        guard let table = table(value, at) else { return build }
        unknownKeys(table, allowed: Self.buildKeys, at: at)
        if let value = table["dockerfile"], let text = relativePath(value, "\(at).dockerfile") { build.dockerfile = text }
        if let value = table["context"], let text = relativePath(value, "\(at).context") { build.context = text }
        if let value = table["target"], let text = string(value, "\(at).target", "use the name of a stage in the Dockerfile") {
            if text.isEmpty || text.contains(where: \.isWhitespace) { issue("\(at).target", "\"\(text.prefix(80))\" is not a stage name", "use the name after 'AS' in a FROM line") }
            else { build.target = text }
        }
        if let value = table["args"], let args = self.table(value, "\(at).args") {
            for (name, value) in args {
                switch value {
                case .string(let text): build.args[name] = text
                case .number(let number): build.args[name] = number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
                case .bool(let flag): build.args[name] = String(flag)
                default: issue("\(at).args.\(name)", "is \(describe(value))", "use a string, number or boolean")
                }
            }
        }
        return build
    }

    mutating func readRun(_ value: JSONValue, at: String, base: RunConfig) -> RunConfig {
        var run = base
        guard let table = table(value, at) else { return run }
        unknownKeys(table, allowed: Self.runKeys, at: at)
        if let value = table["port"], let port = integer(value, "\(at).port", "use a port between 1024 and 65535") {
            if port < 1024 { issue("\(at).port", "\(port) is below 1024", "use a port between 1024 and 65535") }
            else if port > 65535 { issue("\(at).port", "\(port) is above 65535", "use a port between 1024 and 65535") }
            else { run.port = port }
        }
        if let value = table["health"], let path = string(value, "\(at).health", "use a path like \"/healthz\"") {
            if !path.hasPrefix("/") || path.contains(where: { $0.isWhitespace }) || path.count > 1024 {
                issue("\(at).health", "\"\(path.prefix(80))\" is not a URL path", "use a path starting with '/', like \"/healthz\"")
            } else { run.health = path }
        }
        if let seconds = seconds(table["health_interval"], "\(at).health_interval", 1...300) { run.healthInterval = seconds }
        if let seconds = seconds(table["health_timeout"], "\(at).health_timeout", 1...60) { run.healthTimeout = seconds }
        if let seconds = seconds(table["start_grace"], "\(at).start_grace", 1...3600) { run.startGrace = seconds }
        return run
    }

    mutating func readResources(_ value: JSONValue, at: String, base: ResourcesConfig) -> ResourcesConfig {
        var resources = base
        guard let table = table(value, at) else { return resources }
        unknownKeys(table, allowed: Self.resourceKeys, at: at)
        if let value = table["cpu"] {
            if case .number(let cpu) = value, cpu.isFinite {
                if cpu < 0.05 || cpu > 64 { issue("\(at).cpu", "\(cpu) is out of range", "use between 0.05 and 64 CPUs, like 0.5") } else { resources.cpu = cpu }
            } else { issue("\(at).cpu", "is \(describe(value))", "use a number of CPUs, like 0.5") }
        }
        if let value = table["memory"] {
            let text: String? = switch value {
            case .string(let text): text
            case .number(let number) where number.rounded() == number && number > 0 && number < 1e7: "\(Int(number))Mi"
            default: nil
            }
            if let text, let bytes = ByteSize.parse(text) {
                if bytes < 16 * 1_048_576 || bytes > 64 * 1_073_741_824 { issue("\(at).memory", "\"\(text)\" is out of range", "use between 16Mi and 64Gi") }
                else { resources.memory = text }
            } else { issue("\(at).memory", "\(text.map { "\"\($0.prefix(40))\"" } ?? describe(value)) is not a size", "use a number with Mi or Gi, like \"512Mi\"") }
        }
        let minReplicas = table["min_replicas"].flatMap { integer($0, "\(at).min_replicas", "use a whole number from 0 to 100") }
        let maxReplicas = table["max_replicas"].flatMap { integer($0, "\(at).max_replicas", "use a whole number from 1 to 100") }
        if let minReplicas { if (0...100).contains(minReplicas) { resources.minReplicas = minReplicas } else { issue("\(at).min_replicas", "\(minReplicas) is out of range", "use a whole number from 0 to 100") } }
        if let maxReplicas { if (1...100).contains(maxReplicas) { resources.maxReplicas = maxReplicas } else { issue("\(at).max_replicas", "\(maxReplicas) is out of range", "use a whole number from 1 to 100") } }
        if maxReplicas == nil, resources.maxReplicas < resources.minReplicas { resources.maxReplicas = resources.minReplicas }
        if resources.maxReplicas < resources.minReplicas {
            issue("\(at).max_replicas", "\(resources.maxReplicas) is below min_replicas (\(resources.minReplicas))", "use max_replicas >= min_replicas")
        }
        if let value = table["target_cpu"], let percent = integer(value, "\(at).target_cpu", "use a percentage from 10 to 100") {
            if (10...100).contains(percent) { resources.targetCPU = percent } else { issue("\(at).target_cpu", "\(percent) is out of range", "use a percentage from 10 to 100") }
        }
        return resources
    }

    // MARK: - Typed reads that record an issue instead of failing

    mutating func unknownKeys(_ table: [String: JSONValue], allowed: [String], at: String) {
        for key in table.keys.sorted() where !allowed.contains(key) {
            let path = at.isEmpty ? key : "\(at).\(key)"
            let guess = DidYouMean.suggestion(for: key, among: allowed).map { "did you mean '\($0)'? " } ?? ""
            issue(path, "is not a known key", "\(guess)known keys\(at.isEmpty ? "" : " in \(at)"): \(allowed.joined(separator: ", "))")
        }
    }

    mutating func table(_ value: JSONValue, _ key: String) -> [String: JSONValue]? {
        if case .object(let table) = value { return table }
        issue(key, "is \(describe(value))", "use a table: [\(key)] or \(key.split(separator: ".").last ?? "") = { … }")
        return nil
    }

    mutating func string(_ value: JSONValue, _ key: String, _ allowed: String) -> String? {
        if case .string(let text) = value { return text }
        issue(key, "is \(describe(value)), not a string", allowed)
        return nil
    }

    mutating func integer(_ value: JSONValue, _ key: String, _ allowed: String) -> Int? {
        if case .number(let number) = value, number.rounded() == number, abs(number) < 1e12 { return Int(number) }
        issue(key, "is \(describe(value)), not a whole number", allowed)
        return nil
    }

    mutating func seconds(_ value: JSONValue?, _ key: String, _ range: ClosedRange<Int>) -> Int? {
        guard let value else { return nil }
        let allowed = "use whole seconds from \(range.lowerBound) to \(range.upperBound)"
        guard let number = integer(value, key, allowed) else { return nil }
        guard range.contains(number) else {
            issue(key, "\(number) is out of range", allowed)
            return nil
        }
        return number
    }

    /// A path inside the app's folder: relative, without `..` escaping it.
    mutating func relativePath(_ value: JSONValue, _ key: String) -> String? {
        guard let path = string(value, key, "use a path relative to loco.toml's folder") else { return nil }
        var depth = 0
        for part in path.split(separator: "/") where part != "." {
            depth += part == ".." ? -1 : 1
            if depth < 0 { break }
        }
        if path.isEmpty || path.hasPrefix("/") || depth < 0 || path.contains("\0") {
            issue(key, "\"\(path.prefix(80))\" is outside the app's folder", "use a path relative to loco.toml's folder, without leading '/' or '..'")
            return nil
        }
        return path
    }

    mutating func pathPrefix(_ value: JSONValue, _ key: String) -> String? {
        guard let path = string(value, key, "use a path prefix like \"/api\"") else { return nil }
        let valid = path.hasPrefix("/") && path.count <= 256 && !path.contains("//")
            && path.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "/-_.~".contains($0)) }
        guard valid else {
            issue(key, "\"\(path.prefix(80))\" is not a path prefix", "use '/' or a prefix like \"/api\" (letters, digits, '-', '_', '.', '~')")
            return nil
        }
        return path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    }

    func describe(_ value: JSONValue) -> String {
        switch value {
        case .null: return "empty"
        case .bool(let flag): return "a boolean (\(flag))"
        case .number(let number): return "a number (\(number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)))"
        case .string(let text): return "a string (\"\(text.prefix(40))\")"
        case .array: return "a list"
        case .object: return "a table"
        }
    }
}
