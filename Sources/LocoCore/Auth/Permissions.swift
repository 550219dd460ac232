/// Everything a caller can ask to do, for the permission matrix.
public enum Action: String, Sendable, CaseIterable {
    case readTeam = "read team and members"
    case manageMembers = "manage members"
    case createApp = "create apps"
    case readApp = "read apps, status and deployments"
    case deleteApp = "delete apps"
    case deploy = "deploy"
    case cancelDeployment = "cancel deployments"
    case listEnv = "list env var names"
    case revealEnv = "read env var values"
    case writeEnv = "set and unset env vars"
    case readLogs = "read logs"
    case createDeployToken = "create deploy tokens"
    case createPullCredential = "create registry pull credentials"
}

/// The permission matrix, in one place. README.md prints the same table ("Permissions").
///
/// A role may do what its row allows; "app owner" additionally lets the app's owner do it for
/// their own app whatever their role. Another team's resources are never "forbidden": callers
/// outside the team get `not_found`, so nothing about them leaks.
public enum Permissions {
    public struct Rule: Sendable {
        /// The least role that may do it.
        public var minimumRole: Role
        /// Whether the app's owner may do it for their own app even with a lesser role.
        public var appOwner: Bool
    }

    public static func rule(for action: Action) -> Rule {
        switch action {
        case .readTeam, .readApp: Rule(minimumRole: .viewer, appOwner: false)
        case .createApp, .deploy, .cancelDeployment, .listEnv, .writeEnv, .createDeployToken:
            Rule(minimumRole: .developer, appOwner: false)
        case .revealEnv, .readLogs, .createPullCredential: Rule(minimumRole: .admin, appOwner: true)
        case .manageMembers, .deleteApp: Rule(minimumRole: .admin, appOwner: false)
        }
    }

    public static func allows(_ action: Action, role: Role, isAppOwner: Bool = false) -> Bool {
        let rule = rule(for: action)
        return role >= rule.minimumRole || (rule.appOwner && isAppOwner)
    }

    /// What each token kind may do at all (its role then decides within that).
    public static func tokenAllows(_ kind: TokenKind, _ action: Action) -> Bool {
        switch kind {
        case .personal: true
        case .deploy: action == .deploy || action == .readApp
        case .pull, .worker: false
        }
    }
}
