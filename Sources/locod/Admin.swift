import ArgumentParser
import LocoShared
import Foundation
import LocoCore
import LocoQueue

/// Bootstrap for the first operator: users, teams and tokens straight in the database.
struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the first users, teams and tokens (talks to the database directly).",
        subcommands: [CreateUser.self, CreateTeam.self, CreateToken.self]
    )

    struct CreateUser: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a user.")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "E-mail address (the user's login name).") var email: String
        @Option(help: "Display name.") var name = ""
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { pool, _, logger in
                    let user = try await CoreStore(logger: logger).createUser(email: email, name: name, on: pool)
                    if output == .json { try printCoreJSON(user) } else { print("created user \(user.id) <\(user.email)>") }
                }
            }
        }
    }

    struct CreateTeam: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a team with a first owner.")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "Team name (a DNS-1123 label).") var name: String
        @Option(help: "E-mail of the user who owns it.") var owner: String
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { pool, _, logger in
                    let store = CoreStore(logger: logger)
                    guard let user = try await store.user(email: owner, on: pool) else {
                        throw UsageError(message: "no user \(owner)", hint: "Create it first: locod admin create-user --email \(owner)")
                    }
                    let team = try await store.createTeam(name: name, ownerID: user.id, on: pool)
                    if output == .json { try printCoreJSON(team) } else { print("created team \(team.name) owned by \(user.email)") }
                }
            }
        }
    }

    struct CreateToken: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a personal access token for a user, or a worker token.",
            discussion: "The secret is printed once, alone on stdout, so scripts can capture it: TOKEN=$(locod admin create-token --user me@example.com)"
        )
        @OptionGroup var database: DatabaseOptions
        @Option(help: "E-mail of the user the personal token acts as.") var user: String?
        @Option(help: "Make a worker token with this name instead (workers push images).") var worker: String?
        @Option(help: "Token name.") var name = "admin"
        @Option(help: "Lifetime in days (personal tokens; default 90).") var expiresInDays: Int?
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                guard (user == nil) != (worker == nil) else {
                    throw UsageError(message: "give exactly one of --user and --worker", hint: "locod admin create-token --user me@example.com")
                }
                if let expiresInDays { try checkedOption(expiresInDays, "--expires-in-days", in: 1...366, example: "90") }
                try await database.withClient { pool, _, logger in
                    let store = CoreStore(logger: logger)
                    let created: CreatedToken
                    if let worker {
                        created = try await store.createToken(kind: .worker, name: worker, userID: nil, appID: nil, lifetime: nil, on: pool)
                    } else {
                        guard let found = try await store.user(email: user!, on: pool) else {
                            throw UsageError(message: "no user \(user!)", hint: "Create it first: locod admin create-user --email \(user!)")
                        }
                        created = try await store.createToken(kind: .personal, name: name, userID: found.id, appID: nil,
                                                              lifetime: expiresInDays.map { .seconds($0 * 86_400) }, on: pool)
                    }
                    if output == .json { try printCoreJSON(created) } else {
                        StandardStreams.write("created \(created.token.kind.rawValue) token \(created.token.id); it is shown once:\n", to: STDERR_FILENO)
                        print(created.secret)
                    }
                }
            }
        }
    }
}

func printCoreJSON<T: Encodable>(_ value: T) throws {
    let encoder = CoreJSON.encoder
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
