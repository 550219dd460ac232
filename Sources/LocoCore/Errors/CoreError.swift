import LocoQueue

/// Every error the domain and the API can answer with. The list is closed and documented in
/// README.md ("API error codes"); each code has one HTTP status, a message and a hint.
public enum CoreError: CodedError, Equatable {
    case unauthenticated
    case tokenInvalid
    case tokenExpired
    case tokenRevoked
    case wrongTokenKind(needed: String)
    case forbidden(action: String, role: String)
    case notFound(what: String, name: String)
    case routeNotFound(method: String, path: String)
    case methodNotAllowed(method: String, path: String)
    case invalidJSON(reason: String)
    case unknownField(field: String, allowed: [String])
    case missingField(field: String)
    case invalidField(field: String, reason: String, hint: String)
    case invalidName(what: String, name: String)
    case alreadyExists(what: String, name: String)
    case ambiguousApp(name: String, teams: [String])
    case deploymentInProgress(app: String, deploymentID: Int64, state: String)
    case deploymentFinished(deploymentID: Int64, state: String)
    case notRedeployable(deploymentID: Int64, reason: String)
    case lastOwner(team: String)
    case unsupportedMediaType(got: String, expected: String)
    case payloadTooLarge(limit: Int64)
    case invalidContext(reason: String)
    case invalidUpload(reason: String)
    case runtimeUnavailable
    case databaseUnavailable
    case internalError(requestID: String)

    /// All codes, for the documentation test: README.md must list every one.
    public static let allCodes: [String] = [
        "unauthenticated", "token_invalid", "token_expired", "token_revoked", "wrong_token_kind", "forbidden",
        "not_found", "route_not_found", "method_not_allowed", "invalid_json", "unknown_field", "missing_field",
        "invalid_field", "invalid_name", "already_exists", "ambiguous_app", "deployment_in_progress",
        "deployment_finished", "not_redeployable", "last_owner", "unsupported_media_type", "payload_too_large", "invalid_context",
        "invalid_upload", "runtime_unavailable", "database_unavailable", "internal",
        // Answered below the router, by the HTTP layer itself (LocoAPI's ProtocolErrorResponder).
        "headers_too_large", "invalid_request",
    ]

    public var code: String {
        switch self {
        case .unauthenticated: "unauthenticated"
        case .tokenInvalid: "token_invalid"
        case .tokenExpired: "token_expired"
        case .tokenRevoked: "token_revoked"
        case .wrongTokenKind: "wrong_token_kind"
        case .forbidden: "forbidden"
        case .notFound: "not_found"
        case .routeNotFound: "route_not_found"
        case .methodNotAllowed: "method_not_allowed"
        case .invalidJSON: "invalid_json"
        case .unknownField: "unknown_field"
        case .missingField: "missing_field"
        case .invalidField: "invalid_field"
        case .invalidName: "invalid_name"
        case .alreadyExists: "already_exists"
        case .ambiguousApp: "ambiguous_app"
        case .deploymentInProgress: "deployment_in_progress"
        case .deploymentFinished: "deployment_finished"
        case .notRedeployable: "not_redeployable"
        case .lastOwner: "last_owner"
        case .unsupportedMediaType: "unsupported_media_type"
        case .payloadTooLarge: "payload_too_large"
        case .invalidContext: "invalid_context"
        case .invalidUpload: "invalid_upload"
        case .runtimeUnavailable: "runtime_unavailable"
        case .databaseUnavailable: "database_unavailable"
        case .internalError: "internal"
        }
    }

    /// The HTTP status this error answers with.
    public var httpStatus: Int {
        switch self {
        case .unauthenticated, .tokenInvalid, .tokenExpired, .tokenRevoked: 401
        case .wrongTokenKind, .forbidden: 403
        case .notFound, .routeNotFound: 404
        case .methodNotAllowed: 405
        case .invalidJSON, .unknownField, .missingField, .invalidContext, .invalidUpload: 400
        case .invalidField, .invalidName: 422
        case .alreadyExists, .ambiguousApp, .deploymentInProgress, .deploymentFinished, .notRedeployable, .lastOwner: 409
        case .unsupportedMediaType: 415
        case .payloadTooLarge: 413
        case .runtimeUnavailable, .databaseUnavailable: 503
        case .internalError: 500
        }
    }

    public var message: String {
        switch self {
        case .unauthenticated: "this request needs a token"
        case .tokenInvalid: "the token is not valid"
        case .tokenExpired: "the token has expired"
        case .tokenRevoked: "the token was revoked"
        case .wrongTokenKind(let needed): "this token's kind cannot do that; it needs a \(needed) token"
        case .forbidden(let action, let role): "your role (\(role)) may not \(action)"
        case .notFound(let what, let name): what == "deployment" ? "no deployment \(name)" : "no \(what) named '\(name)'"
        case .routeNotFound(let method, let path): "no route \(method) \(path)"
        case .methodNotAllowed(let method, let path): "\(path) does not accept \(method)"
        case .invalidJSON(let reason): "the request body is not valid JSON: \(reason)"
        case .unknownField(let field, _): "unknown field '\(field)'"
        case .missingField(let field): "missing field '\(field)'"
        case .invalidField(let field, let reason, _): "\(field): \(reason)"
        case .invalidName(let what, let name): "'\(name.prefix(80))' is not a valid \(what) name"
        case .alreadyExists(let what, let name): "\(what.first.map { "aeiou".contains($0) } == true ? "an" : "a") \(what) named '\(name)' already exists"
        case .ambiguousApp(let name, let teams): "several of your teams have an app named '\(name)': \(teams.joined(separator: ", "))"
        case .deploymentInProgress(let app, let id, let state): "app '\(app)' already has deployment \(id) in flight (\(state))"
        case .deploymentFinished(let id, let state): "deployment \(id) has already finished (\(state))"
        case .notRedeployable(let id, let reason): "deployment \(id) cannot run again: \(reason)"
        case .lastOwner(let team): "team '\(team)' would be left without an owner"
        case .unsupportedMediaType(let got, let expected): "content type '\(got.prefix(100))' is not accepted here; expected \(expected)"
        case .payloadTooLarge(let limit): "the request body is larger than the limit of \(limit) bytes"
        case .invalidContext(let reason): "the build context is not a valid gzip'd tar: \(reason)"
        case .invalidUpload(let reason): "the upload is malformed: \(reason)"
        case .runtimeUnavailable: "no runtime is configured on this Loco installation, so there are no app logs yet"
        case .databaseUnavailable: "the database is not reachable"
        case .internalError(let requestID): "something went wrong on the server (request \(requestID))"
        }
    }

    public var hint: String {
        switch self {
        case .unauthenticated: "Send 'Authorization: Bearer <token>'; 'loco login' stores one, 'locod admin create-token' makes the first."
        case .tokenInvalid: "Check the token was copied whole; create a new one with 'loco token create'."
        case .tokenExpired: "Create a new token with 'loco token create' (deploy tokens live 5 minutes)."
        case .tokenRevoked: "Create a new token with 'loco token create'."
        case .wrongTokenKind: "Use a personal access token for this; deploy tokens only deploy, pull credentials only pull images."
        case .forbidden: "Ask a team owner or admin to change your role ('loco team members' lists them); 'loco whoami' shows your role in each team."
        case .notFound(let what, _):
            switch what {
            case "deployment": "'loco deployments' lists the app's deployments by id."
            case "env var": "'loco env' lists the app's variables."
            case "token": "'loco token list' lists your tokens."
            case "team": "'loco whoami' lists your teams."
            case "user": "Check the email; an operator creates users with 'locod admin create-user'."
            case "member": "Check the email; 'loco team members' lists the team's members."
            default: "Check the name ('loco apps' lists the apps you can see), or create the app with 'loco apps create NAME' or its first 'loco deploy'."
            }
        case .routeNotFound: "See the API reference in openapi.json."
        case .methodNotAllowed: "See the API reference in openapi.json for the methods this path takes."
        case .invalidJSON: "Send a JSON object with 'Content-Type: application/json'."
        case .unknownField(_, let allowed): "Allowed fields: \(allowed.joined(separator: ", "))."
        case .missingField(let field): "Add '\(field)' to the request body."
        case .invalidField(_, _, let hint): hint
        case .invalidName: "Use a DNS-1123 label: 1–63 lowercase letters, digits or '-', starting with a letter and not ending with '-'."
        case .alreadyExists: "Pick another name, or use the existing one."
        case .ambiguousApp: "Add '?team=NAME' to say which team's app you mean."
        case .deploymentInProgress(let app, let id, _): "Wait for it ('loco deployment show \(id)'), cancel it ('loco cancel \(id)'), or deploy again with --queue to run after it (app \(app))."
        case .deploymentFinished: "Nothing to cancel; start a new deployment with 'loco deploy'."
        case .notRedeployable: "Roll back to a deployment whose images were pushed and are still kept, such as a recent one that served ('loco deployments' lists them), or deploy from source with 'loco deploy'."
        case .lastOwner: "Make another member an owner first."
        case .unsupportedMediaType: "Set the Content-Type header as the API reference says."
        case .payloadTooLarge: "Make the build context smaller: add a .dockerignore for build outputs, caches and dependencies."
        case .invalidContext: "Upload the folder as a gzip'd tar ('loco deploy' does this for you)."
        case .invalidUpload: "Send multipart/form-data with a 'config' part (JSON) and a 'context' part (gzip'd tar)."
        case .runtimeUnavailable: "App logs arrive with a runtime (local or Kubernetes); build output is in 'loco deployment show ID'."
        case .databaseUnavailable: "Check that PostgreSQL is running and LOCO_DATABASE_URL points at it; retry shortly."
        case .internalError: "Retry; if it keeps happening, give the request id to your operator (it is in the server log)."
        }
    }
}
