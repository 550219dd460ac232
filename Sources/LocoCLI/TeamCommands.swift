import ArgumentParser
import Foundation
import LocoConfig
import LocoShared
import NIOHTTP1

/// `loco team list|create|members|add|remove`: teams and who is in them, as
/// `heroku members` and `fly orgs` do. The API decides who may change what (owners and admins
/// manage members; only owners make or unmake owners).
struct TeamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "team", abstract: "Your teams and their members (owners and admins add and remove people).",
        subcommands: [List.self, Create.self, Members.self, Add.self, Remove.self], defaultSubcommand: List.self)

    enum Role: String, CaseIterable, ExpressibleByArgument {
        case owner, admin, developer, viewer
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Your teams and your role in each.")
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let list = try await global.client().call(.GET, "/v1/teams")
            if global.json { printJSON(list); return }
            if list.items.isEmpty { Out.line("You are in no team yet: 'loco team create NAME' makes one."); return }
            Out.line("TEAM\tYOUR ROLE")
            for membership in list.items { Out.line("\(membership["team"]?["name"]?.text ?? "")\t\(membership["role"]?.text ?? "")") }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a team; you are its owner.")
        @Argument(help: "The team's name (lowercase letters, digits and '-').") var name: String
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let created = try await global.client().call(.POST, "/v1/teams", json: .object(["name": .string(name)]))
            if global.json { printJSON(created); return }
            Out.line("Created team \(created["team"]?["name"]?.text ?? name); you are its owner. Add people with 'loco team add EMAIL --team \(name)'.")
        }
    }

    struct Members: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The team's members and their roles.")
        @OptionGroup var team: TeamOption
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let client = try global.client()
            let name = try await team.resolve(client)
            let list = try await client.call(.GET, "/v1/teams/\(APIClient.escape(name))/members")
            if global.json { printJSON(list); return }
            Out.line("EMAIL\tNAME\tROLE\tJOINED")
            for member in list.items {
                Out.line("\(member["email"]?.text ?? "")\t\(member["name"]?.text ?? "")\t\(member["role"]?.text ?? "")\t\(member["joined_at"]?.text ?? "")")
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add someone to the team, or change their role.",
            discussion: "They need a Loco user first (an operator makes one with 'locod admin create-user'). Roles: owner, admin (manage members and every app), developer (deploy), viewer (read).")
        @Argument(help: "Their email.") var email: String
        @Option(help: "Their role in the team.") var role: Role = .developer
        @OptionGroup var team: TeamOption
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let client = try global.client()
            let name = try await team.resolve(client)
            let member = try await client.call(.PUT, "/v1/teams/\(APIClient.escape(name))/members/\(APIClient.escape(email))",
                                               json: .object(["role": .string(role.rawValue)]))
            if global.json { printJSON(member); return }
            Out.line("\(member["email"]?.text ?? email) is \(role == .admin || role == .owner ? "an" : "a") \(role.rawValue) of team \(name).")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take someone out of the team.")
        @Argument(help: "Their email.") var email: String
        @OptionGroup var team: TeamOption
        @OptionGroup var global: GlobalOptions

        func run() async throws {
            let client = try global.client()
            let name = try await team.resolve(client)
            _ = try await client.call(.DELETE, "/v1/teams/\(APIClient.escape(name))/members/\(APIClient.escape(email))")
            if global.json { printJSON(.object(["removed": .string(email), "team": .string(name)])); return }
            Out.line("Removed \(email) from team \(name).")
        }
    }
}

/// Which team a team command is about: `--team`, else loco.toml's `team` (when one is found
/// from the current folder up), else your only team.
struct TeamOption: ParsableArguments {
    @Option(help: "The team (default: loco.toml's team, else your only team).") var team: String?

    func resolve(_ client: APIClient) async throws -> String {
        if let team { return team }
        if let file = ConfigLoader.locate(from: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)),
           let named = (try? ConfigLoader.load(file: file))?.config.team {
            return named
        }
        let teams = try await client.call(.GET, "/v1/teams").items.compactMap { $0["team"]?["name"]?.stringValue }
        switch teams.count {
        case 1: return teams[0]
        case 0: throw CLIError("no_team", "you are in no team", hint: "Create one with 'loco team create NAME', or ask a team's owner to add you.")
        default: throw CLIError("team_required", "you are in \(teams.count) teams (\(teams.joined(separator: ", "))); which one?", hint: "Pass --team NAME.")
        }
    }
}
