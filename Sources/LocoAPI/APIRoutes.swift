import Hummingbird
import LocoCore

/// Every route of the API, in one list. `openapi.json` documents exactly these (a test checks).
public enum APIRoutes {
    public static let all: [APIRoute] = [
        APIRoute(.get, "/healthz", authenticated: false) { api, _, _ in api.healthz() },
        APIRoute(.get, "/readyz", authenticated: false) { api, _, _ in try await api.readyz() },
        APIRoute(.get, "/metrics", authenticated: false) { api, _, _ in api.metricsText() },

        APIRoute(.get, "/v1/whoami") { api, request, _ in try await api.whoami(request) },

        APIRoute(.get, "/v1/teams") { api, request, _ in try await api.listTeams(request) },
        APIRoute(.post, "/v1/teams") { api, request, _ in try await api.createTeam(request) },
        APIRoute(.get, "/v1/teams/{team}", action: .readTeam) { api, request, context in try await api.showTeam(request, context) },
        APIRoute(.get, "/v1/teams/{team}/members", action: .readTeam) { api, request, context in try await api.listMembers(request, context) },
        APIRoute(.put, "/v1/teams/{team}/members/{email}", action: .manageMembers) { api, request, context in try await api.setMember(request, context) },
        APIRoute(.delete, "/v1/teams/{team}/members/{email}", action: .manageMembers) { api, request, context in try await api.removeMember(request, context) },

        APIRoute(.get, "/v1/apps") { api, request, _ in try await api.listApps(request) },
        APIRoute(.post, "/v1/apps", action: .createApp) { api, request, _ in try await api.createApp(request) },
        APIRoute(.get, "/v1/apps/{app}", action: .readApp) { api, request, context in try await api.showApp(request, context) },
        APIRoute(.delete, "/v1/apps/{app}", action: .deleteApp) { api, request, context in try await api.deleteApp(request, context) },
        APIRoute(.get, "/v1/apps/{app}/status", action: .readApp) { api, request, context in try await api.appStatus(request, context) },
        APIRoute(.get, "/v1/apps/{app}/instances", action: .readApp) { api, request, context in try await api.appInstances(request, context) },
        APIRoute(.get, "/v1/apps/{app}/logs", action: .readLogs) { api, request, context in try await api.appLogs(request, context) },

        APIRoute(.post, "/v1/apps/{app}/deployments", action: .deploy) { api, request, context in try await api.submitDeployment(request, context) },
        APIRoute(.get, "/v1/apps/{app}/deployments", action: .readApp) { api, request, context in try await api.listDeployments(request, context) },
        APIRoute(.get, "/v1/deployments/{id}", action: .readApp) { api, request, context in try await api.showDeployment(request, context) },
        APIRoute(.post, "/v1/deployments/{id}/cancel", action: .cancelDeployment) { api, request, context in try await api.cancelDeployment(request, context) },
        APIRoute(.post, "/v1/deployments/{id}/redeploy", action: .deploy) { api, request, context in try await api.redeployDeployment(request, context) },
        APIRoute(.get, "/v1/deployments/{id}/events", action: .readApp) { api, request, context in try await api.deploymentEvents(request, context) },

        APIRoute(.get, "/v1/apps/{app}/scale", action: .readApp) { api, request, context in try await api.showScale(request, context) },
        APIRoute(.put, "/v1/apps/{app}/scale", action: .deploy) { api, request, context in try await api.setScale(request, context) },
        APIRoute(.delete, "/v1/apps/{app}/scale", action: .deploy) { api, request, context in try await api.resetScale(request, context) },

        APIRoute(.get, "/v1/apps/{app}/env", action: .listEnv) { api, request, context in try await api.listEnv(request, context) },
        APIRoute(.put, "/v1/apps/{app}/env", action: .writeEnv) { api, request, context in try await api.setEnv(request, context) },
        APIRoute(.delete, "/v1/apps/{app}/env/{name}", action: .writeEnv) { api, request, context in try await api.unsetEnv(request, context) },

        APIRoute(.get, "/v1/tokens") { api, request, _ in try await api.listTokens(request) },
        APIRoute(.post, "/v1/tokens") { api, request, _ in try await api.createToken(request) },
        APIRoute(.delete, "/v1/tokens/{id}") { api, request, context in try await api.revokeToken(request, context) },

        // Docker registry token service (auth.token): Basic or Bearer auth with a Loco token.
        APIRoute(.get, "/v1/registry/token") { api, request, _ in try await api.registryToken(request) },
    ]
}
