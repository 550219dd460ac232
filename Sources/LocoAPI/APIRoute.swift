import HTTPTypes
import Hummingbird
import LocoCore

/// One route of the API. Every route is declared in `APIRoutes.all` and registered from there,
/// so the router, the OpenAPI document and the authorization test all see the same list.
public struct APIRoute: Sendable {
    public let method: HTTPRequest.Method
    /// OpenAPI style: `/v1/apps/{app}`.
    public let path: String
    /// The permission it needs, from the matrix (`nil`: any caller with a personal token, or public).
    public let action: Action?
    /// Whether a token is needed at all.
    public let authenticated: Bool
    let handler: @Sendable (API, Request, BasicRequestContext) async throws -> Response

    init(_ method: HTTPRequest.Method, _ path: String, action: Action? = nil, authenticated: Bool = true,
         _ handler: @escaping @Sendable (API, Request, BasicRequestContext) async throws -> Response) {
        self.method = method
        self.path = path
        self.action = action
        self.authenticated = authenticated
        self.handler = handler
    }

    /// Hummingbird style: `/v1/apps/:app`.
    var routerPath: String {
        path.split(separator: "/", omittingEmptySubsequences: false).map { segment in
            segment.hasPrefix("{") ? ":" + segment.dropFirst().dropLast() : segment
        }.joined(separator: "/")
    }

    func matches(path candidate: String) -> Bool {
        let template = path.split(separator: "/")
        let parts = candidate.split(separator: "/")
        guard template.count == parts.count else { return false }
        return zip(template, parts).allSatisfy { $0.hasPrefix("{") || $0 == $1 }
    }
}
