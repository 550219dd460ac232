import LocoShared

/// Push failures, each with the report code the deployment's failure report carries.
public enum PushError: CodedError, Equatable {
    case unreachable(registry: String, reason: String)
    case authFailed(registry: String, status: Int, detail: String)
    case rejected(what: String, status: Int, code: String, detail: String)
    case digestMismatch(expected: String, got: String)
    case tooLarge(size: Int64, limit: Int64)
    case layoutInvalid(reason: String)

    public var code: String {
        switch self {
        case .unreachable: "REGISTRY_UNREACHABLE"
        case .authFailed: "REGISTRY_AUTH_FAILED"
        case .rejected, .digestMismatch, .tooLarge, .layoutInvalid: "PUSH_FAILED"
        }
    }

    /// Whether trying again later may help.
    public var isTransient: Bool {
        if case .unreachable = self { return true }
        return false
    }

    public var message: String {
        switch self {
        case .unreachable(let registry, let reason): "the registry at \(registry) did not answer: \(reason)"
        case .authFailed(let registry, let status, let detail): "the registry at \(registry) refused the credentials (\(status)): \(detail)"
        case .rejected(let what, let status, let code, let detail): "the registry refused \(what) (\(status) \(code)): \(detail)"
        case .digestMismatch(let expected, let got): "the registry stored the manifest as \(got), not \(expected)"
        case .tooLarge(let size, let limit): "the image is \(size) bytes, over the limit of \(limit)"
        case .layoutInvalid(let reason): "the built image cannot be read: \(reason)"
        }
    }

    public var hint: String {
        switch self {
        case .unreachable: "Check that the registry runs and the workers can reach it; the push is retried with backoff."
        case .authFailed: "Check the worker's token (locod admin create-token --worker) and the registry's auth.token settings."
        case .rejected: "This is not transient; look at the registry's log for the request, then deploy again."
        case .digestMismatch: "The registry or something in between rewrote the manifest; check for proxies."
        case .tooLarge: "Make the image smaller (multi-stage build, smaller base) or raise the operator's size limit."
        case .layoutInvalid: "The build stage's output is damaged; deploy again to rebuild it."
        }
    }
}
