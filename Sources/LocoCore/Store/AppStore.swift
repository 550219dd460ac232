import Foundation
import LocoQueue
import PostgresNIO

/// An app together with the caller's role in its team.
public struct AppAccess: Sendable, Equatable {
    public var app: App
    public var role: Role
    public var isOwner: Bool

    public init(app: App, role: Role, isOwner: Bool) {
        self.app = app
        self.role = role
        self.isOwner = isOwner
    }
}

/// What the cleanup workers need to remove a deleted app: its names and the images it pushed.
public struct AppRemovalArgs: JobArgs, Equatable {
    public static let kind = "app.remove"
    public var team: String
    public var app: String
    public var images: [String]

    public init(team: String, app: String, images: [String]) {
        self.team = team
        self.app = app
        self.images = images
    }
}

extension CoreStore {
    public func createApp(teamID: Int64, name: String, type: AppType, ownerID: Int64, on db: some QueryRunner) async throws -> App {
        guard NameRules.isDNSLabel(name) else { throw CoreError.invalidName(what: "app", name: name) }
        do {
            return try await document("""
                WITH a AS (INSERT INTO loco_apps (team_id, name, type, owner_id) VALUES (\(teamID), \(name), \(type.rawValue), \(ownerID)) RETURNING *)
                SELECT \(unescaped: Projection.app) FROM a JOIN loco_teams t ON t.id = a.team_id
                """, as: App.self, on: db)!
        } catch where isUniqueViolation(error) {
            throw CoreError.alreadyExists(what: "app", name: name)
        }
    }

    /// Every app in every team the user belongs to.
    public func apps(forUser userID: Int64, team: String? = nil, on db: some QueryRunner) async throws -> [App] {
        try await documents("""
            SELECT \(unescaped: Projection.app) FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id
            JOIN loco_memberships m ON m.team_id = a.team_id AND m.user_id = \(userID)
            WHERE (\(team)::text IS NULL OR t.name = \(team)::text) ORDER BY t.name, a.name
            """, as: App.self, on: db)
    }

    public func app(id: Int64, on db: some QueryRunner) async throws -> App? {
        try await document("SELECT \(unescaped: Projection.app) FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id WHERE a.id = \(id)",
                           as: App.self, on: db)
    }

    /// The app named `name` among the user's teams, with their role. Apps of other teams are
    /// `not_found`, exactly like apps that do not exist.
    public func access(app name: String, team: String?, userID: Int64, on db: some QueryRunner) async throws -> AppAccess {
        let rows = try await db.run("""
            SELECT \(unescaped: Projection.app), m.role FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id
            JOIN loco_memberships m ON m.team_id = a.team_id AND m.user_id = \(userID)
            WHERE a.name = \(name) AND (\(team)::text IS NULL OR t.name = \(team)::text)
            """, logger: logger)
        var found: [AppAccess] = []
        for try await (json, role) in rows.decode((String, String).self) {
            let app = try CoreJSON.decoder.decode(App.self, from: Data(json.utf8))
            found.append(AppAccess(app: app, role: Role(rawValue: role) ?? .viewer, isOwner: app.ownerID == userID))
        }
        guard let first = found.first else { throw CoreError.notFound(what: "app", name: name) }
        if found.count > 1 { throw CoreError.ambiguousApp(name: name, teams: found.map(\.app.team).sorted()) }
        return first
    }

    /// The caller's access to an app they reach by id (a deployment's app), or `nil` outside their teams.
    public func access(appID: Int64, userID: Int64, on db: some QueryRunner) async throws -> AppAccess? {
        let rows = try await db.run("""
            SELECT \(unescaped: Projection.app), m.role FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id
            JOIN loco_memberships m ON m.team_id = a.team_id AND m.user_id = \(userID)
            WHERE a.id = \(appID)
            """, logger: logger)
        for try await (json, role) in rows.decode((String, String).self) {
            let app = try CoreJSON.decoder.decode(App.self, from: Data(json.utf8))
            return AppAccess(app: app, role: Role(rawValue: role) ?? .viewer, isOwner: app.ownerID == userID)
        }
        return nil
    }

    /// Deletes an app: cancels its live jobs, then removes it with its deployments, events, env and
    /// tokens, and — in the same transaction — queues an `app.remove` job (queue `cleanup`) that
    /// takes its containers off the runtime and its images out of the registry. Returns the build
    /// contexts that no deployment references any more.
    public func deleteApp(id: Int64, on db: some TransactionRunner) async throws -> [String] {
        try await db.transaction { connection in
            try await execute("SELECT id FROM loco_apps WHERE id = \(id) FOR UPDATE", on: connection)
            if let app = try await app(id: id, on: connection) {
                let removal = AppRemovalArgs(team: app.team, app: app.name, images: try await pushedImages(appID: id, on: connection))
                _ = try await jobs.enqueue(try NewJob(removal, queue: Stage.cleanup.queue, maxAttempts: 10), on: connection)
            }
            var jobIDs: [Int64] = []
            for try await id in try await connection.run("""
                SELECT dj.job_id FROM loco_deployment_jobs dj JOIN loco_deployments d ON d.id = dj.deployment_id WHERE d.app_id = \(id)
                """, logger: logger).decode(Int64.self) {
                jobIDs.append(id)
            }
            try await jobs.cancel(ids: jobIDs, on: connection)
            var digests: [String] = []
            for try await digest in try await connection.run("""
                DELETE FROM loco_deployments WHERE app_id = \(id) RETURNING context_digest
                """, logger: logger).decode(String?.self) {
                if let digest { digests.append(digest) }
            }
            try await execute("DELETE FROM loco_apps WHERE id = \(id)", on: connection)
            return try await unreferencedContexts(Array(Set(digests)), on: connection)
        }
    }

    /// Which of `digests` no unfinished deployment still needs.
    func unreferencedContexts(_ digests: [String], on db: some QueryRunner) async throws -> [String] {
        guard !digests.isEmpty else { return [] }
        var used = Set<String>()
        for try await digest in try await db.run("""
            SELECT DISTINCT context_digest FROM loco_deployments
            WHERE context_digest = ANY(\(digests)) AND state IN ('queued','building','pushing','applying','waiting')
            """, logger: logger).decode(String.self) {
            used.insert(digest)
        }
        return digests.filter { !used.contains($0) }
    }
}

extension CoreStore {
    /// Contexts of deployments that ended in the last `window` and that no unfinished deployment
    /// needs: whichever process ended them, the reconciler deletes their files.
    public func recentlyReleasedContexts(window: Duration = .seconds(600), on db: some QueryRunner) async throws -> [String] {
        var digests: [String] = []
        for try await digest in try await db.run("""
            SELECT DISTINCT context_digest FROM loco_deployments
            WHERE context_digest IS NOT NULL AND finished_at > now() - make_interval(secs => \(Double(window.components.seconds))::float8)
            EXCEPT
            SELECT context_digest FROM loco_deployments
            WHERE context_digest IS NOT NULL AND state IN ('queued','building','pushing','applying','waiting')
            """, logger: logger).decode(String.self) {
            digests.append(digest)
        }
        return digests
    }

    /// Repositories (`team/app`) of the team's other apps that have pushed images lately, newest
    /// first: places a push can mount shared layers from.
    public func recentlyPushedRepositories(team: String, except app: String, limit: Int = 3, on db: some QueryRunner) async throws -> [String] {
        var repositories: [String] = []
        for try await name in try await db.run("""
            SELECT a.name FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id
            JOIN LATERAL (SELECT max(d.id) AS latest FROM loco_deployments d WHERE d.app_id = a.id AND d.image_digest IS NOT NULL) p ON p.latest IS NOT NULL
            WHERE t.name = \(team) AND a.name <> \(app)
            ORDER BY p.latest DESC LIMIT \(Int64(limit))
            """, logger: logger).decode(String.self) {
            repositories.append("\(team)/\(name)")
        }
        return repositories
    }

    /// The deployment that serves the app now: its newest success.
    public func servingDeploymentID(appID: Int64, on db: some QueryRunner) async throws -> Int64? {
        try await scalar("""
            SELECT max(id) FROM loco_deployments WHERE app_id = \(appID) AND state = 'succeeded'
            """, as: Int64?.self, on: db) ?? nil
    }

    /// Every image a deployment names, one row per deployment and digest (`id`, `app_id`,
    /// `state`, `used_at`, `digest`): `image_digest` and the digest of each service's reference in
    /// `images` (`HOST/REPOSITORY@sha256:…`). `image_digest` alone is the service pushed last, and
    /// the services of an app share its repository: pruning by it alone deleted an unchanged
    /// service's image while the serving version still ran it. Add `WHERE … AND r.digest IS NOT NULL`.
    static let deploymentImages = """
        SELECT d.id, d.app_id, d.state, coalesce(d.finished_at, d.created_at) AS used_at, r.digest
        FROM loco_deployments d
        CROSS JOIN LATERAL (
            SELECT d.image_digest
            UNION
            SELECT substring(e.value FROM '@([a-z0-9]+:[0-9a-f]+)$') FROM jsonb_each_text(d.images) AS e
        ) AS r(digest)
        """

    /// The distinct image digests the app's deployments pushed, newest first.
    public func pushedImages(appID: Int64, on db: some QueryRunner) async throws -> [String] {
        var digests: [String] = []
        for try await digest in try await db.run("""
            WITH refs AS (
            \(unescaped: Self.deploymentImages)
            WHERE d.app_id = \(appID) AND r.digest IS NOT NULL
            )
            SELECT digest FROM refs GROUP BY digest ORDER BY max(id) DESC, digest
            """, logger: logger).decode(String.self) {
            digests.append(digest)
        }
        return digests
    }

    /// The app's images that cleanup after a success deletes: all but those of its last `keep`
    /// versions that served (the serving one among them) and those an unfinished deployment
    /// still needs (a redeploy waiting in line). A version is a set of images: a restart or an
    /// unchanged redeploy is the same version again, and a multi-service version keeps the images
    /// of all its services. Images of failed deployments are never rolled back to, so they do
    /// not take the place of ones that served.
    public func imagesToPrune(appID: Int64, keep: Int, on db: some QueryRunner) async throws -> [String] {
        var digests: [String] = []
        for try await digest in try await db.run("""
            WITH refs AS (
            \(unescaped: Self.deploymentImages)
            WHERE d.app_id = \(appID) AND r.digest IS NOT NULL
            ), versions AS (
                SELECT max(d.id) AS id FROM loco_deployments d
                WHERE d.app_id = \(appID) AND d.state = 'succeeded' AND d.id IN (SELECT id FROM refs)
                GROUP BY CASE WHEN d.images = '{}'::jsonb THEN to_jsonb(d.image_digest) ELSE d.images END
                ORDER BY max(d.id) DESC LIMIT \(Int64(keep))
            ), kept AS (
                SELECT digest FROM refs
                WHERE id IN (SELECT id FROM versions) OR state = ANY(\(DeploymentState.inFlight.map(\.rawValue))::text[])
            )
            SELECT DISTINCT digest FROM refs
            WHERE digest NOT IN (SELECT digest FROM kept)
              AND digest NOT IN (SELECT digest FROM loco_pruned_images WHERE app_id = \(appID))
            ORDER BY digest
            """, logger: logger).decode(String.self) {
            digests.append(digest)
        }
        return digests
    }

    /// Images the registry lifecycle may delete: for every app, those older than `age` (by the
    /// last deployment that used them) except those of its newest `keep` versions (every
    /// service's image of each; a restart is the same version again) and the serving one's.
    public func expiredImages(olderThan age: Duration, keep: Int, on db: some QueryRunner) async throws -> [(appID: Int64, repository: String, digest: String)] {
        var result: [(Int64, String, String)] = []
        for try await (appID, team, app, digest) in try await db.run("""
            WITH refs AS (
            \(unescaped: Self.deploymentImages)
            WHERE r.digest IS NOT NULL
            ), used AS (
                SELECT app_id, digest AS image_digest, max(id) AS latest, max(used_at) AS last_used FROM refs GROUP BY app_id, digest
            ), ranked AS (
                SELECT u.*, dense_rank() OVER (PARTITION BY u.app_id ORDER BY u.latest DESC) AS rank FROM used u
            ), serving AS (
                SELECT r.app_id, r.digest AS image_digest FROM refs r
                JOIN (SELECT DISTINCT ON (app_id) app_id, id FROM refs WHERE state = 'succeeded' ORDER BY app_id, id DESC) s ON s.id = r.id
            )
            SELECT a.id, t.name, a.name, r.image_digest FROM ranked r
            JOIN loco_apps a ON a.id = r.app_id JOIN loco_teams t ON t.id = a.team_id
            LEFT JOIN serving s ON s.app_id = r.app_id AND s.image_digest = r.image_digest
            LEFT JOIN loco_pruned_images p ON p.app_id = r.app_id AND p.digest = r.image_digest
            WHERE r.rank > \(Int64(keep)) AND s.app_id IS NULL AND p.app_id IS NULL
              AND r.last_used < now() - make_interval(secs => \(Double(age.components.seconds))::float8)
            ORDER BY t.name, a.name, r.latest, r.image_digest
            """, logger: logger).decode((Int64, String, String, String).self) {
            result.append((appID, "\(team)/\(app)", digest))
        }
        return result
    }

    /// Records images that are no longer in the registry (deleted, or found gone).
    public func markPruned(appID: Int64, digests: [String], on db: some QueryRunner) async throws {
        guard !digests.isEmpty else { return }
        try await execute("""
            INSERT INTO loco_pruned_images (app_id, digest) SELECT \(appID), unnest(\(digests)::text[])
            ON CONFLICT DO NOTHING
            """, on: db)
    }

    /// Those of `digests` that cleanup has deleted from the app's repository.
    public func prunedImages(appID: Int64, among digests: [String], on db: some QueryRunner) async throws -> Set<String> {
        guard !digests.isEmpty else { return [] }
        var pruned: Set<String> = []
        for try await digest in try await db.run("""
            SELECT digest FROM loco_pruned_images WHERE app_id = \(appID) AND digest = ANY(\(digests)::text[])
            """, logger: logger).decode(String.self) {
            pruned.insert(digest)
        }
        return pruned
    }

    /// Deletes the stored files of `digests` that no unfinished deployment names, and returns
    /// those it deleted. The list may be stale (read before a new deployment of the same context
    /// committed): each digest is checked again under its lock, which `submit` holds while it
    /// places the file and writes the deployment, so the check sees that deployment or the
    /// submit places the file after the delete.
    @discardableResult
    public func removeContexts(_ digests: [String], from contexts: ContextStore, on db: some TransactionRunner) async throws -> [String] {
        let present = Set(digests).filter(contexts.contains(digest:)).sorted()
        guard !present.isEmpty else { return [] }
        return try await db.transaction { connection in
            // In the order of the lock keys, so two removals never wait on each other in a cycle.
            try await execute("""
                SELECT pg_advisory_xact_lock(\(Self.contextLockClass), h)
                FROM (SELECT DISTINCT hashtext(d) AS h FROM unnest(\(present)::text[]) d ORDER BY h) keys
                """, on: connection)
            let unused = try await unreferencedContexts(present, on: connection)
            contexts.remove(digests: unused)
            return unused
        }
    }

    /// The first key of the advisory locks that guard a context's file (the second is the
    /// digest's `hashtext`).
    static let contextLockClass: Int32 = 0x4C43_5458
}
