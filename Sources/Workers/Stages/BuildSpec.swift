import LocoCore

/// What to build for one service, read from the deployed config (loco.toml as JSON):
/// `build.dockerfile`, `build.context`, `build.args`, `build.target`, per service under
/// `services[].build` (or the top-level `build` for a single-service app).
public struct BuildSpec: Sendable, Equatable {
    public var dockerfile: String
    public var context: String
    public var args: [String: String]
    public var target: String?

    public static func from(config: JSONValue, service: String?) -> BuildSpec {
        var build = config["build"]
        if let service, case .array(let services)? = config["services"],
           let entry = services.first(where: { $0["name"]?.stringValue == service }) {
            build = entry["build"] ?? .object(["dockerfile": entry["dockerfile"] ?? .null, "context": entry["context"] ?? .null])
        }
        var args: [String: String] = [:]
        if case .object(let values)? = build?["args"] {
            for (key, value) in values {
                switch value {
                case .string(let text): args[key] = text
                case .number(let number): args[key] = number.rounded() == number && abs(number) < 1e15 ? String(Int64(number)) : String(number)
                case .bool(let flag): args[key] = String(flag)
                default: continue
                }
            }
        }
        return BuildSpec(dockerfile: build?["dockerfile"]?.stringValue ?? "Dockerfile",
                         context: build?["context"]?.stringValue ?? ".",
                         args: args, target: build?["target"]?.stringValue)
    }
}
