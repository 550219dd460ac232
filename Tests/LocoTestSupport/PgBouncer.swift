import Foundation
import LocoQueue

/// A real PgBouncer in transaction pooling in front of the test PostgreSQL, with few server
/// connections, so that one client's consecutive transactions land on different server sessions
/// (what breaks anything that leans on session state: named prepared statements, LISTEN,
/// session settings and locks).
public struct PgBouncer: Sendable {
    public let process: ChildProcess
    let folder: URL
    /// The way to `database` through the pooler (same user and database, the pooler's port).
    public let url: DatabaseURL
    static let installHint = "apt-get install -y pgbouncer (scripts/test installs it)"
    static let binary = "/usr/sbin/pgbouncer"

    /// Starts one for `database` with `serverConnections` server connections per database.
    public static func start(before database: DatabaseURL, serverConnections: Int = 2) async throws -> PgBouncer {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw TestSetupError("pgbouncer is not installed: \(installHint)")
        }
        // In the run's temporary folder, so that scripts/test stops it if a test cannot. It reads
        // its files as root, before it becomes the postgres user (it refuses to run as root).
        let folder = FileManager.default.temporaryDirectory.appending(path: "loco-pgbouncer-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let users = folder.appending(path: "users.txt")
        try "\"\(database.username)\" \"\"\n".write(to: users, atomically: true, encoding: .utf8)
        for _ in 0..<5 {
            let port = try freePort()
            let config = folder.appending(path: "pgbouncer-\(port).ini")
            try """
                [databases]
                * = host=\(database.host) port=\(database.port)

                [pgbouncer]
                listen_addr = 127.0.0.1
                listen_port = \(port)
                unix_socket_dir =
                auth_type = trust
                auth_file = \(users.path)
                pool_mode = transaction
                default_pool_size = \(serverConnections)
                max_client_conn = 100
                server_lifetime = 3600
                """.write(to: config, atomically: true, encoding: .utf8)
            let started = try ChildProcess(URL(fileURLWithPath: binary), ["-u", "postgres", config.path])
            if await eventually(timeout: .seconds(10), { started.output.contains("process up") || started.exitStatusIfExited() != nil }),
               started.output.contains("process up") {
                var url = database
                url.port = port
                return PgBouncer(process: started, folder: folder, url: url)
            }
            started.stop()
        }
        try? FileManager.default.removeItem(at: folder)
        throw TestSetupError("pgbouncer did not start (\(binary) -u postgres CONFIG)")
    }

    public func stop() {
        process.stop()
        try? FileManager.default.removeItem(at: folder)
    }
}
