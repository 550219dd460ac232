import Foundation
import LocoQueue
import PostgresNIO

/// A team as one of its members sees it.
public struct TeamMembership: Sendable, Codable, Equatable {
    public var team: Team
    public var role: Role
}

extension CoreStore {
    public func createUser(email: String, name: String, on db: some QueryRunner) async throws -> User {
        guard NameRules.isEmail(email) else {
            throw CoreError.invalidField(field: "email", reason: "'\(email.prefix(80))' is not an e-mail address", hint: "Use an address like dev@example.com.")
        }
        let displayName = name.isEmpty ? String(email.prefix { $0 != "@" }) : name
        do {
            let user = try await document(
                "INSERT INTO loco_users AS u (email, name) VALUES (\(email.lowercased()), \(displayName)) RETURNING \(unescaped: Projection.user)",
                as: User.self, on: db)
            return user!
        } catch where isUniqueViolation(error) {
            throw CoreError.alreadyExists(what: "user", name: email)
        }
    }

    public func user(email: String, on db: some QueryRunner) async throws -> User? {
        try await document("SELECT \(unescaped: Projection.user) FROM loco_users u WHERE u.email = \(email.lowercased())", as: User.self, on: db)
    }

    public func user(id: Int64, on db: some QueryRunner) async throws -> User? {
        try await document("SELECT \(unescaped: Projection.user) FROM loco_users u WHERE u.id = \(id)", as: User.self, on: db)
    }

    /// Creates a team with `ownerID` as its first owner.
    public func createTeam(name: String, ownerID: Int64, on db: some TransactionRunner) async throws -> Team {
        guard NameRules.isDNSLabel(name) else { throw CoreError.invalidName(what: "team", name: name) }
        do {
            return try await db.transaction { connection in
                let team = try await document(
                    "INSERT INTO loco_teams AS t (name) VALUES (\(name)) RETURNING \(unescaped: Projection.team)",
                    as: Team.self, on: connection)!
                try await execute("INSERT INTO loco_memberships (team_id, user_id, role) VALUES (\(team.id), \(ownerID), 'owner')", on: connection)
                return team
            }
        } catch where isUniqueViolation(error) {
            throw CoreError.alreadyExists(what: "team", name: name)
        }
    }

    public func teams(forUser userID: Int64, on db: some QueryRunner) async throws -> [TeamMembership] {
        let rows = try await db.run("""
            SELECT \(unescaped: Projection.team), m.role FROM loco_teams t JOIN loco_memberships m ON m.team_id = t.id
            WHERE m.user_id = \(userID) ORDER BY t.name
            """, logger: logger)
        var result: [TeamMembership] = []
        for try await (json, role) in rows.decode((String, String).self) {
            result.append(TeamMembership(team: try CoreJSON.decoder.decode(Team.self, from: Data(json.utf8)), role: Role(rawValue: role) ?? .viewer))
        }
        return result
    }

    /// The team named `name` if `userID` is a member; otherwise `not_found`, whether or not it exists.
    public func membership(team name: String, userID: Int64, on db: some QueryRunner) async throws -> TeamMembership {
        guard let found = try await teams(forUser: userID, on: db).first(where: { $0.team.name == name }) else {
            throw CoreError.notFound(what: "team", name: name)
        }
        return found
    }

    public func members(teamID: Int64, on db: some QueryRunner) async throws -> [Member] {
        try await documents("""
            SELECT jsonb_build_object('user_id', u.id, 'email', u.email, 'name', u.name, 'role', m.role,
                                      'joined_at', loco_rfc3339(m.created_at))::text
            FROM loco_memberships m JOIN loco_users u ON u.id = m.user_id
            WHERE m.team_id = \(teamID) ORDER BY u.email
            """, as: Member.self, on: db)
    }

    /// Adds a member, or changes the role of one already there.
    public func setMember(teamID: Int64, teamName: String, userID: Int64, role: Role, on db: some TransactionRunner) async throws {
        try await db.transaction { connection in
            try await lockTeam(teamID, on: connection)
            try await execute("""
                INSERT INTO loco_memberships (team_id, user_id, role) VALUES (\(teamID), \(userID), \(role.rawValue))
                ON CONFLICT (team_id, user_id) DO UPDATE SET role = EXCLUDED.role
                """, on: connection)
            try await requireOwner(teamID: teamID, teamName: teamName, on: connection)
        }
    }

    /// Removes a member; refuses to leave the team without an owner.
    public func removeMember(teamID: Int64, teamName: String, userID: Int64, on db: some TransactionRunner) async throws {
        try await db.transaction { connection in
            try await lockTeam(teamID, on: connection)
            let removed = try await scalar("DELETE FROM loco_memberships WHERE team_id = \(teamID) AND user_id = \(userID) RETURNING user_id",
                                           as: Int64.self, on: connection)
            guard removed != nil else { throw CoreError.notFound(what: "member", name: "\(userID)") }
            try await requireOwner(teamID: teamID, teamName: teamName, on: connection)
        }
    }

    private func lockTeam(_ teamID: Int64, on connection: PostgresConnection) async throws {
        try await execute("SELECT id FROM loco_teams WHERE id = \(teamID) FOR UPDATE", on: connection)
    }

    private func requireOwner(teamID: Int64, teamName: String, on connection: PostgresConnection) async throws {
        let owners = try await scalar("SELECT count(*) FROM loco_memberships WHERE team_id = \(teamID) AND role = 'owner'", as: Int64.self, on: connection) ?? 0
        if owners == 0 { throw CoreError.lastOwner(team: teamName) }
    }
}
