import Foundation
import Logging
import LocoQueue
import PostgresNIO

/// All of the domain's SQL. Functions take the database they run on, so the API can run several
/// in one transaction and workers can join their stage's result to their job's completion.
public struct CoreStore: Sendable {
    let logger: Logger
    let jobs: JobStore

    public init(logger: Logger) {
        self.logger = logger
        self.jobs = JobStore(logger: logger)
    }

    /// Rows whose single column is a JSON document, decoded into `T`.
    func documents<T: Decodable>(_ query: PostgresQuery, as type: T.Type, on db: some QueryRunner) async throws -> [T] {
        var result: [T] = []
        for try await text in try await db.run(query, logger: logger).decode(String.self) {
            do {
                result.append(try CoreJSON.decoder.decode(T.self, from: Data(text.utf8)))
            } catch {
                logger.error("could not decode a \(T.self) row", metadata: ["error": "\(error)"])
                throw error
            }
        }
        return result
    }

    func document<T: Decodable>(_ query: PostgresQuery, as type: T.Type, on db: some QueryRunner) async throws -> T? {
        try await documents(query, as: type, on: db).first
    }

    /// Runs a statement and drains its rows.
    func execute(_ query: PostgresQuery, on db: some QueryRunner) async throws {
        for try await _ in try await db.run(query, logger: logger) {}
    }

    func scalar<T: PostgresDecodable & Sendable>(_ query: PostgresQuery, as type: T.Type, on db: some QueryRunner) async throws -> T? {
        for try await value in try await db.run(query, logger: logger).decode(T.self) { return value }
        return nil
    }
}

/// Whether PostgreSQL refused a row because a unique index already holds its key.
public func isUniqueViolation(_ error: any Error, constraint: String? = nil) -> Bool {
    guard let error = error as? PSQLError, error.serverInfo?[.sqlState] == "23505" else { return false }
    guard let constraint else { return true }
    return error.serverInfo?[.constraintName] == constraint
}

/// JSON projections of the domain's rows, one per model, so every query returns the same shape.
enum Projection {
    static let team = "jsonb_build_object('id', t.id, 'name', t.name, 'created_at', loco_rfc3339(t.created_at))::text"
    static let user = "jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name, 'created_at', loco_rfc3339(u.created_at))::text"
    static let app = """
        jsonb_build_object('id', a.id, 'team_id', a.team_id, 'team', t.name, 'name', a.name, 'type', a.type,
                           'owner_id', a.owner_id, 'created_at', loco_rfc3339(a.created_at))::text
        """
    static let deployment = """
        jsonb_build_object('id', d.id, 'app_id', d.app_id, 'app', a.name, 'team', t.name, 'state', d.state,
                           'queued_behind', d.queued_behind, 'created_by', d.created_by, 'config', d.config,
                           'context_digest', d.context_digest, 'context_bytes', d.context_bytes,
                           'image_digest', d.image_digest, 'image_ref', d.image_ref, 'images', d.images, 'url', d.url, 'stages', d.stages,
                           'report', d.report, 'cancel_requested', d.cancel_requested, 'redeploy_of', d.redeploy_of,
                           'replicas', d.replicas, 'reason', d.reason,
                           'created_at', loco_rfc3339(d.created_at), 'finished_at', loco_rfc3339(d.finished_at))::text
        """
    static let event = """
        jsonb_build_object('id', e.id, 'deployment_id', e.deployment_id, 'at', loco_rfc3339(e.at), 'type', e.type,
                           'stage', e.stage, 'message', e.message, 'data', e.data)::text
        """
    static let token = """
        jsonb_build_object('id', k.id, 'kind', k.kind, 'name', k.name, 'hint', k.hint, 'user_id', k.user_id,
                           'app_id', k.app_id, 'created_at', loco_rfc3339(k.created_at),
                           'expires_at', loco_rfc3339(k.expires_at), 'revoked_at', loco_rfc3339(k.revoked_at),
                           'last_used_at', loco_rfc3339(k.last_used_at))::text
        """
}
