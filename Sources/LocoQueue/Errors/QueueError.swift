/// Errors the queue library raises to its callers (not the errors of the jobs it runs).
public enum QueueError: CodedError, Equatable {
    /// `endpoint` is `host:port` or a socket path.
    case databaseUnreachable(endpoint: String, reason: String)
    /// The server answered and refused this user: wrong password, no pg_hba.conf line, no such role.
    case databaseLoginRefused(endpoint: String, user: String, reason: String)
    case databaseNotFound(endpoint: String, database: String)
    /// The URL demands TLS (`sslmode=require` or stronger) and the server offers none.
    case databaseTLSUnavailable(endpoint: String, mode: String)
    /// The server's certificate failed the check `sslmode` asks for.
    case databaseCertificateRejected(endpoint: String, mode: String, reason: String)
    case invalidDatabaseURL(reason: String)
    case invalidQueueName(String)
    case invalidKind(String)
    case invalidArgs(kind: String, reason: String)
    case invalidEnqueue(reason: String)
    case invalidWorkerConfiguration(reason: String)
    case unknownDependencies([Int64])
    case jobNotFound(Int64)
    case jobNotInState(id: Int64, state: JobState, wanted: String)
    case invalidCronExpression(expression: String, reason: String)
    case unknownPeriodicJob(name: String, known: [String])
    case leaseLost(id: Int64)
    case migrationFailed(version: Int, name: String, reason: String)
    case pauseNotRecorded(queue: String)
    case periodicJobNotChanged(name: String)
    case invalidArgsFilter(filter: String, reason: String)
    case sessionSettingsRefused(settings: [String], reason: String)
    /// Migrations this program has and the database lacks, as `component/version_name`.
    case migrationsPending(database: String, pending: [String])
    case invalidScale(reason: String)
    /// PostgreSQL answered with rows of another shape than Loco's migrations give its tables
    /// (a column's type changed by hand).
    case schemaMismatch(reason: String)

    public var code: String {
        switch self {
        case .databaseUnreachable: "database_unreachable"
        case .databaseLoginRefused: "database_login_refused"
        case .databaseNotFound: "database_not_found"
        case .databaseTLSUnavailable: "database_tls_unavailable"
        case .databaseCertificateRejected: "database_certificate_rejected"
        case .invalidDatabaseURL: "invalid_database_url"
        case .invalidQueueName: "invalid_queue_name"
        case .invalidKind: "invalid_kind"
        case .invalidArgs: "invalid_args"
        case .invalidEnqueue: "invalid_enqueue"
        case .invalidWorkerConfiguration: "invalid_worker_configuration"
        case .unknownDependencies: "unknown_dependency"
        case .jobNotFound: "job_not_found"
        case .jobNotInState: "job_state_conflict"
        case .invalidCronExpression: "invalid_cron_expression"
        case .unknownPeriodicJob: "unknown_periodic_job"
        case .leaseLost: "lease_lost"
        case .migrationFailed: "migration_failed"
        case .pauseNotRecorded: "pause_not_recorded"
        case .periodicJobNotChanged: "periodic_job_not_changed"
        case .invalidArgsFilter: "invalid_args_filter"
        case .sessionSettingsRefused: "session_settings_refused"
        case .migrationsPending: "migrations_pending"
        case .invalidScale: "invalid_scale"
        case .schemaMismatch: "schema_mismatch"
        }
    }

    public var message: String {
        switch self {
        case let .databaseUnreachable(endpoint, reason):
            "cannot reach PostgreSQL at \(endpoint): \(reason)"
        case let .databaseLoginRefused(endpoint, user, reason):
            "PostgreSQL at \(endpoint) refused to log user '\(user)' in: \(reason)"
        case let .databaseNotFound(endpoint, database):
            "PostgreSQL at \(endpoint) has no database '\(database)'"
        case let .databaseTLSUnavailable(endpoint, mode):
            "PostgreSQL at \(endpoint) does not offer TLS, and the URL's sslmode=\(mode) demands it"
        case let .databaseCertificateRejected(endpoint, mode, reason):
            "the TLS certificate of PostgreSQL at \(endpoint) fails sslmode=\(mode)'s check: \(reason)"
        case let .invalidDatabaseURL(reason):
            "the database URL is not valid: \(reason)"
        case let .invalidQueueName(name):
            "queue name '\(name)' is not valid"
        case let .invalidKind(kind):
            "job kind '\(kind)' is not valid"
        case let .invalidArgs(kind, reason):
            "the arguments of a '\(kind)' job are not valid: \(reason)"
        case let .invalidEnqueue(reason):
            "the job cannot be enqueued: \(reason)"
        case let .invalidWorkerConfiguration(reason):
            "the worker cannot start: \(reason)"
        case let .unknownDependencies(ids):
            "the job depends on jobs that do not exist: \(ids.map(String.init).joined(separator: ", "))"
        case let .jobNotFound(id):
            "job \(id) does not exist"
        case let .jobNotInState(id, state, wanted):
            "job \(id) is \(state.rawValue); it must be \(wanted)"
        case let .invalidCronExpression(expression, reason):
            "cron expression '\(expression)' is not valid: \(reason)"
        case let .unknownPeriodicJob(name, _):
            "there is no periodic job named '\(name)'"
        case let .leaseLost(id):
            "this worker no longer holds job \(id) (its lease expired and another worker may have it)"
        case let .migrationFailed(version, name, reason):
            "migration \(version) (\(name)) failed: \(reason)"
        case let .pauseNotRecorded(queue):
            "the pause of queue '\(queue)' was not recorded"
        case let .periodicJobNotChanged(name):
            "the change to periodic job '\(name)' was not recorded"
        case let .invalidArgsFilter(filter, reason):
            "the args filter '\(filter)' cannot select jobs: \(reason)"
        case let .sessionSettingsRefused(settings, reason):
            "PostgreSQL refused the connection's session settings (\(settings.joined(separator: ", "))): \(reason)"
        case let .migrationsPending(database, pending):
            "database \(database) lacks \(pending.count) migration\(pending.count == 1 ? "" : "s") of this program: \(pending.joined(separator: ", "))"
        case let .invalidScale(reason):
            "the queue cannot be scaled: \(reason)"
        case let .schemaMismatch(reason):
            "PostgreSQL's answer does not have the shape Loco's migrations give its tables: \(reason)"
        }
    }

    public var hint: String {
        switch self {
        case .databaseUnreachable:
            "Check that PostgreSQL is running and that LOCO_DATABASE_URL (or --database-url) names the right host and port; scripts/services start postgres starts a local one."
        case .databaseLoginRefused:
            "Check the user and password in LOCO_DATABASE_URL (or --database-url; percent-encode @ : / ? # in a password) and the pg_hba.conf line for this host, user and database, which may also demand TLS (sslmode)."
        case let .databaseNotFound(_, database):
            "Create it (CREATE DATABASE \"\(database)\", or createdb \(database)) and run 'locod migrate', or name the right database at the end of the URL."
        case .databaseTLSUnavailable:
            "Turn TLS on in the server (ssl = on, with ssl_cert_file and ssl_key_file), or connect with sslmode=prefer or disable where the network is trusted."
        case let .databaseCertificateRejected(_, mode, _):
            mode == "verify-full"
                ? "Give the CA that signed the server's certificate as sslrootcert=/path/to/ca.pem, and connect by a name the certificate holds; sslmode=verify-ca skips the name check, sslmode=require only encrypts."
                : "Give the CA that signed the server's certificate as sslrootcert=/path/to/ca.pem; sslmode=require without sslrootcert only encrypts, checking nothing."
        case .invalidDatabaseURL:
            "Use the form postgres://USER:PASSWORD@HOST:PORT/DATABASE, with libpq's parameters where needed, e.g. ?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem (README, \"Database URLs\", lists them)."
        case .invalidQueueName:
            "Use 1 to 64 characters from a-z, 0-9, '_', '-' and '.'."
        case .invalidKind:
            "Use 1 to 128 characters from a-z, A-Z, 0-9, '_', '-', '.' and ':'."
        case .invalidArgs:
            "Pass a JSON object that matches the job kind's arguments."
        case .invalidEnqueue:
            "Fix the request as the message says and enqueue again."
        case .invalidWorkerConfiguration:
            "See 'locod worker --help' for the options and their ranges."
        case .unknownDependencies:
            "Enqueue the jobs it depends on first, in the same transaction, and pass their ids."
        case .jobNotFound:
            "List jobs with 'locod queue list' to find the right id; finished jobs are pruned after the retention period."
        case .jobNotInState:
            "Look at the job with 'locod queue show ID' first."
        case .invalidCronExpression:
            "Use five fields (minute hour day-of-month month day-of-week), e.g. '*/15 * * * *', or @hourly, @daily, @weekly, @monthly; times are UTC unless it starts with CRON_TZ=ZONE, e.g. 'CRON_TZ=Europe/Berlin 0 3 * * *'."
        case let .unknownPeriodicJob(_, known):
            known.isEmpty ? "No periodic jobs are declared." : "Known periodic jobs: \(known.joined(separator: ", "))."
        case .leaseLost:
            "Nothing to do: the job's result was dropped so it is never applied twice; the job runs again elsewhere."
        case .migrationFailed:
            "Fix the database as the message says, then run 'locod migrate' again; applied migrations are not repeated."
        case .pauseNotRecorded:
            "Pause it again; 'locod queue stats' shows which queues are paused."
        case .periodicJobNotChanged:
            "Run the command again; 'locod cron' lists each periodic job as the schedulers see it."
        case .invalidArgsFilter:
            #"Pass a JSON object the jobs' args contain, e.g. --args '{"deployment_id": 42}': it selects the jobs whose args hold those keys with those values."#
        case .sessionSettingsRefused:
            "They need PostgreSQL 12 or newer (Loco is tested on 15; 'SELECT version()' tells). Behind a transaction-mode pooler such as PgBouncer, run the worker with --poll-only."
        case .migrationsPending:
            "Run 'locod migrate' (or apply the script 'locod migrate sql' prints with your own migration tool)."
        case .invalidScale:
            "Pass a queue and a concurrency from 1 to 10000, e.g. 'locod queue scale build 2' (add --worker ID for one worker; --reset undoes it)."
        case .schemaMismatch:
            "A table of Loco's was changed outside its migrations: compare it with the tables in the script 'locod migrate sql' prints and change the column back ('locod migrate check' compares migration versions only)."
        }
    }
}

extension QueueError {
    /// The database cannot be used from here at all, whatever the request: it cannot be reached,
    /// or it refuses this connection (login, database, TLS).
    public var isDatabaseUnavailable: Bool {
        switch self {
        case .databaseUnreachable, .databaseLoginRefused, .databaseNotFound, .databaseTLSUnavailable, .databaseCertificateRejected: true
        default: false
        }
    }
}
