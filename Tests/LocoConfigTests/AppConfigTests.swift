import Foundation
import LocoConfig
import LocoShared
import Testing

@Suite("loco.toml")
struct AppConfigTests {
    @Test("an omitted field gets its default, and the effective config names every setting")
    func defaults() throws {
        let config = try ConfigLoader.parse(toml: "name = \"hello\"\n")
        #expect(config.version == 1 && config.type == "service")
        #expect(config.build.dockerfile == "Dockerfile" && config.build.context == ".")
        #expect(config.run.port == 8080 && config.run.health == "/" && config.run.startGrace == 60)
        #expect(config.resources.memory == "256Mi" && config.resources.memoryBytes == 268_435_456 && config.resources.cpu == 0.5)
        #expect(config.effectiveServices.map(\.name) == ["web"])
        let json = config.json
        #expect(json["routing"]?["subdomain"]?.stringValue == "hello", "the subdomain defaults to the name")
        #expect(json["run"]?["health_interval"] == .number(2))
        // What the API stores reads back to the same config.
        #expect(try ConfigLoader.parse(json: json).json == json)
    }

    @Test("a full file with two services reads as written; services inherit run and resources")
    func full() throws {
        let config = try ConfigLoader.parse(toml: """
        version = 1
        name = "shop"
        team = "acme"
        type = "service"
        env_file = ".env"

        [run]
        port = 3000
        health = "/healthz"
        start_grace = 20

        [resources]
        cpu = 1
        memory = "1Gi"
        max_replicas = 3

        [routing]
        subdomain = "store"

        [env]
        MODE = "production"
        WORKERS = 4

        [[services]]
        name = "api"
        path = "/api/"
        [services.build]
        dockerfile = "Dockerfile.api"
        args = { VERSION = "1.2" }

        [[services]]
        name = "web"
        path = "/"
        [services.run]
        port = 8081
        """)
        #expect(config.team == "acme" && config.envFile == ".env" && config.env == ["MODE": "production", "WORKERS": "4"])
        #expect(config.routing.subdomain == "store")
        #expect(config.services.map(\.name) == ["api", "web"])
        #expect(config.services[0].path == "/api", "a trailing slash is dropped")
        #expect(config.services[0].build.context == "api" && config.services[0].build.dockerfile == "Dockerfile.api")
        #expect(config.services[0].build.args == ["VERSION": "1.2"])
        #expect(config.services[0].run.port == 3000 && config.services[0].run.health == "/healthz", "inherited from [run]")
        #expect(config.services[1].run.port == 8081 && config.services[1].run.health == "/healthz", "a service's own [run] starts from the app's")
        #expect(config.services[1].resources.memory == "1Gi" && config.resources.maxReplicas == 3)
    }

    @Test("every problem is reported at once, with key, line and what is allowed")
    func allErrors() throws {
        let text = """
        name = "Hello"
        typ = "service"

        [run]
        port = 80
        helth = "/"

        [resources]
        memory = "lots"

        [routing]
        subdomain = "www"
        """
        let error = try #require(throws: ConfigError.self) { try ConfigLoader.parse(toml: text) }
        let lines = error.issues.map(\.description)
        #expect(lines.contains("run.port: 80 is below 1024 (line 5); use a port between 1024 and 65535"), "\(lines)")
        #expect(lines.contains { $0.hasPrefix("typ: is not a known key (line 2); did you mean 'type'?") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("run.helth: is not a known key (line 6); did you mean 'health'?") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("name: \"Hello\" is not a valid app name (line 1)") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("resources.memory: \"lots\" is not a size (line 9)") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("routing.subdomain: \"www\" is reserved (line 12)") }, "\(lines)")
        #expect(error.issues.count == 6)
        #expect(error.code == "config_invalid" && error.message.contains("6 problems"))
    }

    @Test("a size too large for any machine is refused, not a crash")
    func hugeSizes() throws {
        // "99999999999Gi" is past Int64: converting it trapped and crashed the CLI, and would have
        // crashed the API or a worker reading a deployment's config.
        for size in ["99999999999Gi", "1e300Mi", "9.3e18K"] {
            #expect(ByteSize.parse(size) == nil, "\(size)")
            let text = "version = 1\nname = \"hello\"\n[run]\nport = 8080\n[resources]\nmemory = \"\(size)\"\n"
            let error = try #require(throws: ConfigError.self) { try ConfigLoader.parse(toml: text) }
            #expect(error.issues.map(\.description).contains { $0.hasPrefix("resources.memory: \"\(size)\" is not a size (line 6)") }, "\(error.issues)")
        }
        #expect(ByteSize.parse("64Gi") == 68_719_476_736)
    }

    @Test("keys inside [[services]] tables name their index and line")
    func serviceLines() throws {
        let error = try #require(throws: ConfigError.self) {
            try ConfigLoader.parse(toml: "name = \"a\"\n[[services]]\nname = \"api\"\npath = \"/api\"\n[[services]]\nname = \"api\"\n[services.run]\nport = 99999\n")
        }
        let lines = error.issues.map(\.description)
        #expect(lines.contains { $0.hasPrefix("services[1].name: \"api\" is used by another service (line 6)") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("services[1].run.port: 99999 is above 65535 (line 8)") }, "\(lines)")
    }

    @Test("a file from a newer format asks for an upgrade; broken TOML names its line")
    func versionsAndSyntax() throws {
        let newer = try #require(throws: ConfigError.self) { try ConfigLoader.parse(toml: "version = 2\nname = \"a\"\nfancy = true\n") }
        #expect(newer.kind == .tooNew && newer.hint.contains("Upgrade loco"))
        let broken = try #require(throws: ConfigError.self) { try ConfigLoader.parse(toml: "name = \"a\"\n[run]\nport = \n") }
        #expect(broken.issues.first?.line == 3 && broken.message.contains("not valid TOML"), "\(broken.message)")
        let missing = try #require(throws: ConfigError.self) { try ConfigLoader.parse(toml: "[run]\nport = 8080\n") }
        #expect(missing.issues.map(\.key) == ["name"])
        #expect(try ConfigLoader.parse(toml: "", defaultName: "folder").name == "folder", "the folder's name when name is left out")
        let escape = try #require(throws: ConfigError.self) { try ConfigLoader.parse(toml: "name = \"a\"\n[build]\ncontext = \"../x\"\n") }
        #expect(escape.issues.first?.key == "build.context")
    }

    @Test("paths resolve against the folder of loco.toml, found from any folder below it")
    func locate() throws {
        let root = FileManager.default.temporaryDirectory.appending(path: "loco-config-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        try FileManager.default.createDirectory(at: root.appending(path: "src/deep"), withIntermediateDirectories: true)
        try Data("name = \"x\"\n".utf8).write(to: root.appending(path: "loco.toml"))
        let found = try #require(ConfigLoader.locate(from: root.appending(path: "src/deep")))
        let loaded = try ConfigLoader.load(file: found)
        #expect(loaded.folder.standardizedFileURL.path == root.standardizedFileURL.path)
    }

    @Test("inputs that crash toml++ are refused first, with their line; their valid neighbours still parse")
    func parserHazards() throws {
        for (text, line) in [("name = \"a\"\n[+x]\n", 2), ("name = \"a\"\n[build]\nargs = { A = [ }\n", 3), ("x = [1,,2]\n", 1),
                             ("x = { , }\n", 1), ("[\nrun]\n", 1), ("[[[services]]\n", 1)] {
            let error = try #require(throws: ConfigError.self) { try ConfigLoader.parse(toml: text) }
            #expect(error.issues.first?.line == line && error.message.contains("not valid TOML"), "\(text): \(error.message)")
        }
        let valid = "name = \"a\" # the name\n[build]\nargs = {}\n[env]\nLIST = \"[1,,2]\"\nS = '[ }'\nM = \"\"\"\n[+x]\n\"\"\"\n"
        #expect(try ConfigLoader.parse(toml: valid).env["S"] == "[ }")
    }

    /// Random and mutated files: every input ends in a config or a ConfigError, never a crash.
    /// `LOCO_FUZZ_SEED` and `LOCO_FUZZ_CASES` run other cases; `LOCO_FUZZ_TRACE=FILE` keeps the
    /// current input in FILE, so a crash leaves the input that caused it.
    @Test("fuzz: 4,000 random and mutated files never crash the parser or the validator")
    func fuzz() {
        let environment = ProcessInfo.processInfo.environment
        var random = SeededRandom(seed: environment["LOCO_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x10C0)
        let cases = environment["LOCO_FUZZ_CASES"].flatMap { Int($0) } ?? 4000
        let seeds = [
            "version = 1\nname = \"shop\"\n[run]\nport = 3000\nhealth = \"/h\"\n[resources]\nmemory = \"1Gi\"\ncpu = 0.5\n",
            "name = \"a\"\n[[services]]\nname = \"api\"\npath = \"/api\"\n[services.build]\nargs = { A = 1 }\n[[services]]\nname = \"web\"\n",
            "name = \"b\"\n[env]\nA = \"x\"\n[routing]\nsubdomain = \"b\"\npath = \"/\"\n[build]\ndockerfile = \"D\"\ntarget = \"t\"\n",
        ]
        let alphabet = Array("[]{}=\"'.,#\n \t0123456789abcdefghijklmnopqrstuvwxyz_-/\\:+eE")
        var configs = 0, errors = 0
        for round in 0..<cases {
            var bytes: [Character]
            if round % 4 == 0 {
                bytes = (0..<random.next(upTo: 200)).map { _ in alphabet[random.next(upTo: alphabet.count)] }
            } else {
                bytes = Array(seeds[round % seeds.count])
                for _ in 0...random.next(upTo: 6) {
                    let at = random.next(upTo: bytes.count + 1)
                    switch random.next(upTo: 4) {
                    case 0 where at < bytes.count: bytes.remove(at: at)
                    case 1: bytes.insert(alphabet[random.next(upTo: alphabet.count)], at: at)
                    case 2 where at < bytes.count: bytes[at] = alphabet[random.next(upTo: alphabet.count)]
                    default:
                        let start = random.next(upTo: bytes.count), length = random.next(upTo: 20)
                        bytes.insert(contentsOf: bytes[start..<min(bytes.count, start + length)], at: at)
                    }
                }
            }
            if let trace = ProcessInfo.processInfo.environment["LOCO_FUZZ_TRACE"] { try? String(bytes).write(toFile: trace, atomically: false, encoding: .utf8) }
            do {
                let config = try ConfigLoader.parse(toml: String(bytes))
                _ = try ConfigLoader.parse(json: config.json)
                configs += 1
            } catch {
                #expect(!error.issues.isEmpty && !error.message.isEmpty)
                errors += 1
            }
        }
        #expect(configs + errors == cases && configs > 0 && errors > 0)
    }
}

/// xorshift64*: the same cases on every run.
struct SeededRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next(upTo bound: Int) -> Int {
        guard bound > 0 else { return 0 }
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return Int((state &* 2_685_821_657_736_338_717) % UInt64(bound))
    }
}
