import Foundation
import PostgresNIO

/// The API's hot read, prepared once per connection: planning the status document costs ten
/// times more than running it (pgbench, 16 clients: 3,500/s unprepared vs 33,000/s prepared).
enum CoreStatements {
    struct StatusByName: PostgresPreparedStatement {
        static let name = "loco_status_by_name_v1"
        static let sql = """
            SELECT m.role, a.owner_id IS NOT DISTINCT FROM $3::int8, \(CoreStore.statusDocument)
            FROM loco_apps a JOIN loco_teams t ON t.id = a.team_id
            JOIN loco_memberships m ON m.team_id = a.team_id AND m.user_id = $3::int8
            WHERE a.name = $1::text AND ($2::text IS NULL OR t.name = $2::text)
            """
        typealias Row = (String, Bool, String)

        let app: String
        let team: String?
        let userID: Int64

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 3)
            bindings.append(app)
            bindings.append(team)
            bindings.append(userID)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }
}
