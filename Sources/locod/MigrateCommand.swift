import ArgumentParser
import Foundation
import LocoQueue

/// `locod migrate`: applies the schema, and says where a database stands against this locod.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply database migrations (safe to run from several processes at once), or show, check or print them.",
        discussion: """
            'status' lists every migration, applied (and when) or pending; 'check' exits 1 while any is pending \
            (for a deploy step that must not start workers on an old schema); 'sql' prints the pending ones \
            (or with --all every one) as one SQL script, for psql or your own migration tool.
            """,
        subcommands: [Apply.self, Status.self, Check.self, SQL.self],
        defaultSubcommand: Apply.self
    )

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Apply the migrations the database lacks.")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { client, url, logger in
                    let applied = try await Migrator(database: client, logger: logger).migrate(LocodSchema.all)
                    if applied.isEmpty {
                        print("database \(url.database) is up to date")
                    } else {
                        for name in applied { print("applied \(name)") }
                    }
                }
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every migration: applied (and when) or pending, and any a newer locod applied.")
        @OptionGroup var database: DatabaseOptions
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                let statuses = try await database.withClient { client, _, logger in
                    try await Migrator(database: client, logger: logger).status(LocodSchema.all)
                }
                if output == .json { return try printJSON(statuses.map(MigrationView.init)) }
                for status in statuses {
                    let state = status.appliedAt.map { "applied \($0.formatted(.iso8601))" } ?? "pending"
                    print("\(status.label.padding(toLength: 36, withPad: " ", startingAt: 0)) \(state)\(status.known ? "" : " (by a newer locod; this one does not know it)")")
                }
                let pending = statuses.filter(\.isPending).count
                print(pending == 0 ? "up to date" : "\(pending) pending: run 'locod migrate'")
            }
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Exit 0 if the database has every migration of this locod, else 1 with the ones it lacks.",
            discussion: "Migrations a newer locod applied do not fail the check: an older locod runs on a newer schema.")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { client, url, logger in
                    let pending = try await Migrator(database: client, logger: logger).status(LocodSchema.all).filter(\.isPending)
                    guard pending.isEmpty else { throw QueueError.migrationsPending(database: url.database, pending: pending.map(\.label)) }
                    print("database \(url.database) is up to date")
                }
            }
        }
    }

    struct SQL: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sql",
            abstract: "Print the pending migrations (or with --all every one) as one SQL script.",
            discussion: """
                The script is what 'locod migrate' runs, in one transaction, under the same lock, recording each migration \
                in loco_schema_migrations: 'psql -v ON_ERROR_STOP=1 -f FILE' applies it, and 'locod migrate' then finds nothing to do. \
                --all needs no database.
                """)
        @OptionGroup var database: DatabaseOptions
        @Flag(help: "Every migration, as for an empty database, without asking one.") var all = false

        func run() async throws {
            try await reportingErrors {
                let everything = LocodSchema.all.flatMap { set in set.migrations.sorted { $0.version < $1.version }.map { (component: set.component, migration: $0) } }
                guard !all else { return print(Migrator.script(everything), terminator: "") }
                let pending = try await database.withClient { client, _, logger in
                    try await Migrator(database: client, logger: logger).status(LocodSchema.all).filter(\.isPending)
                }
                let chosen = everything.filter { item in
                    pending.contains { $0.component == item.component && $0.version == item.migration.version }
                }
                print(Migrator.script(chosen), terminator: "")
            }
        }
    }
}

/// A migration's status as `locod migrate status --output json` prints it.
struct MigrationView: Encodable {
    var component: String
    var version: Int
    var name: String
    var applied_at: Date?
    var pending: Bool
    var known: Bool

    init(_ status: MigrationStatus) {
        component = status.component
        version = status.version
        name = status.name
        applied_at = status.appliedAt
        pending = status.isPending
        known = status.known
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(component, forKey: .component)
        try container.encode(version, forKey: .version)
        try container.encode(name, forKey: .name)
        try container.encode(applied_at, forKey: .applied_at)
        try container.encode(pending, forKey: .pending)
        try container.encode(known, forKey: .known)
    }

    enum CodingKeys: String, CodingKey { case component, version, name, applied_at, pending, known }
}
