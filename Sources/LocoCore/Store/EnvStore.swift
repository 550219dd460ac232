import Foundation
import LocoQueue
import PostgresNIO

/// One environment variable of an app; `value` is `nil` when the caller may not see values.
public struct EnvVar: Sendable, Codable, Equatable {
    public var name: String
    public var value: String?
    public var updatedAt: Date

    enum CodingKeys: String, CodingKey {
        case name, value, updatedAt = "updated_at"
    }
}

extension CoreStore {
    /// The app's variables, values included; the API drops values for callers who may not see them.
    public func env(appID: Int64, on db: some QueryRunner) async throws -> [EnvVar] {
        try await documents("""
            SELECT jsonb_build_object('name', name, 'value', value, 'updated_at', loco_rfc3339(updated_at))::text
            FROM loco_env_vars WHERE app_id = \(appID) ORDER BY name
            """, as: EnvVar.self, on: db)
    }

    /// Sets several variables at once: all or none.
    public func setEnv(appID: Int64, _ values: [String: String], on db: some QueryRunner) async throws {
        for name in values.keys.sorted() where !NameRules.isEnvName(name) {
            throw CoreError.invalidField(field: "vars.\(name.prefix(60))", reason: "is not a valid variable name",
                                         hint: "Use letters, digits and '_', not starting with a digit.")
        }
        for (name, value) in values where value.utf8.count > 64 * 1024 || value.contains("\0") {
            throw CoreError.invalidField(field: "vars.\(name)", reason: "value must be under 64 KiB and contain no NUL byte",
                                         hint: "Store large or binary data elsewhere and pass a reference.")
        }
        let names = values.keys.sorted()
        let texts = names.map { values[$0]! }
        try await execute("""
            INSERT INTO loco_env_vars (app_id, name, value)
            SELECT \(appID), n, v FROM unnest(\(names)::text[], \(texts)::text[]) AS x(n, v)
            ON CONFLICT (app_id, name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
            """, on: db)
    }

    /// Removes variables; returns the names that existed.
    public func unsetEnv(appID: Int64, names: [String], on db: some QueryRunner) async throws -> [String] {
        var removed: [String] = []
        for try await name in try await db.run("""
            DELETE FROM loco_env_vars WHERE app_id = \(appID) AND name = ANY(\(names)::text[]) RETURNING name
            """, logger: logger).decode(String.self) {
            removed.append(name)
        }
        return removed.sorted()
    }
}
