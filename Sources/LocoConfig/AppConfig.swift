import LocoShared

/// An app's loco.toml with every default filled in: what `loco config show` prints and what a
/// deployment carries to the workers (as JSON, see `json`).
public struct AppConfig: Sendable, Equatable {
    /// The loco.toml format this loco reads; a file with a higher `version` asks for an upgrade.
    public static let formatVersion = 1
    public static let appTypes = ["service", "static", "redis", "postgres", "blob"]
    /// Subdomains that name Loco's own endpoints or are commonly reserved, never an app's.
    public static let reservedSubdomains: Set<String> = [
        "www", "api", "admin", "registry", "loco", "app", "apps", "auth", "login", "console", "dashboard",
        "status", "docs", "mail", "smtp", "imap", "ftp", "ns1", "ns2", "cdn", "static", "localhost",
    ]

    public var version = AppConfig.formatVersion
    /// DNS-1123 label, unique per team.
    public var name: String
    /// Which of the user's teams owns the app; needed only when the user is in several.
    public var team: String?
    public var type = "service"
    public var build = BuildConfig()
    public var run = RunConfig()
    public var resources = ResourcesConfig()
    public var routing = RoutingConfig()
    /// Plain values from loco.toml (not for secrets: use `loco env set`).
    public var env: [String: String] = [:]
    /// A dotenv file whose values `loco deploy` stores as the app's env vars.
    public var envFile: String?
    /// Several services behind one host, routed by path prefix; empty for a one-service app.
    public var services: [ServiceConfig] = []

    public init(name: String) { self.name = name }

    /// Whether the app's images are built from a Dockerfile (redis, postgres and blob are not).
    public var isBuilt: Bool { type == "service" || type == "static" }

    /// The services as they run: the listed ones, or one named `web` from the top-level settings.
    public var effectiveServices: [ServiceConfig] {
        services.isEmpty ? [ServiceConfig(name: "web", path: routing.path, build: build, run: run, resources: resources)] : services
    }
}

public struct BuildConfig: Sendable, Equatable {
    /// Relative to `context`.
    public var dockerfile = "Dockerfile"
    /// Relative to the folder of loco.toml.
    public var context = "."
    public var target: String?
    public var args: [String: String] = [:]
    public init() {}
}

public struct RunConfig: Sendable, Equatable {
    public var port = 8080
    /// Readiness: GET here must answer 2xx or 3xx.
    public var health = "/"
    public var healthInterval = 2
    public var healthTimeout = 2
    /// Seconds a new version may take to become ready.
    public var startGrace = 60
    public init() {}
}

public struct ResourcesConfig: Sendable, Equatable {
    public var cpu = 0.5
    /// As written (`256Mi`); `memoryBytes` is its value.
    public var memory = "256Mi"
    public var minReplicas = 1
    public var maxReplicas = 1
    /// Autoscaling target: average CPU utilisation in percent.
    public var targetCPU = 70
    public init() {}

    public var memoryBytes: Int64 { ByteSize.parse(memory) ?? 256 * 1_048_576 }
}

public struct RoutingConfig: Sendable, Equatable {
    /// Defaults to the app's name.
    public var subdomain: String?
    public var path = "/"
    public init() {}
}

public struct ServiceConfig: Sendable, Equatable {
    public var name: String
    /// The path prefix this service answers under (`/api`); one service has `/`.
    public var path: String
    public var build: BuildConfig
    public var run: RunConfig
    public var resources: ResourcesConfig

    public init(name: String, path: String, build: BuildConfig, run: RunConfig, resources: ResourcesConfig) {
        self.name = name
        self.path = path
        self.build = build
        self.run = run
        self.resources = resources
    }
}

/// Kubernetes-style sizes: `512Mi`, `1Gi`, `1G`, or plain bytes.
public enum ByteSize {
    static let units: [(String, Double)] = [("Ki", 1024), ("Mi", 1_048_576), ("Gi", 1_073_741_824), ("K", 1e3), ("M", 1e6), ("G", 1e9)]

    public static func parse(_ text: String) -> Int64? {
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            // Bounded before converting: a size past Int64 (say "99999999999Gi") trapped the conversion,
            // which crashed whichever process read the config.
            guard let number = Double(text.dropLast(suffix.count)), number.isFinite, number > 0,
                  number * factor < 0x1p62 else { return nil }
            return Int64(number * factor)
        }
        guard let number = Int64(text), number > 0 else { return nil }
        return number
    }
}

extension AppConfig {
    /// The effective config as the API and the workers read it (keys as in loco.toml).
    public var json: JSONValue {
        var object: [String: JSONValue] = [
            "version": .number(Double(version)), "name": .string(name), "type": .string(type),
            "build": build.json, "run": run.json, "resources": resources.json,
            "routing": .object(["subdomain": .string(routing.subdomain ?? name), "path": .string(routing.path)]),
            "env": .object(env.mapValues(JSONValue.string)),
        ]
        if let team { object["team"] = .string(team) }
        if let envFile { object["env_file"] = .string(envFile) }
        if !services.isEmpty { object["services"] = .array(services.map(\.json)) }
        return .object(object)
    }
}

extension BuildConfig {
    var json: JSONValue {
        var object: [String: JSONValue] = ["dockerfile": .string(dockerfile), "context": .string(context), "args": .object(args.mapValues(JSONValue.string))]
        if let target { object["target"] = .string(target) }
        return .object(object)
    }
}

extension RunConfig {
    var json: JSONValue {
        .object(["port": .number(Double(port)), "health": .string(health), "health_interval": .number(Double(healthInterval)),
                 "health_timeout": .number(Double(healthTimeout)), "start_grace": .number(Double(startGrace))])
    }
}

extension ResourcesConfig {
    var json: JSONValue {
        .object(["cpu": .number(cpu), "memory": .string(memory), "min_replicas": .number(Double(minReplicas)),
                 "max_replicas": .number(Double(maxReplicas)), "target_cpu": .number(Double(targetCPU))])
    }
}

extension ServiceConfig {
    var json: JSONValue {
        .object(["name": .string(name), "path": .string(path), "build": build.json, "run": run.json, "resources": resources.json])
    }
}
