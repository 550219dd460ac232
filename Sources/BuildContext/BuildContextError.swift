import LocoShared

/// What can go wrong with a build context, on either side of the upload.
public enum BuildContextError: CodedError, Equatable {
    /// An archive entry the build worker will not unpack; the report names it.
    case invalidEntry(entry: String, reason: String)
    /// The archive itself does not read (not gzip, not tar, truncated).
    case unreadable(reason: String)
    /// Over a cap: total bytes, number of files, path length.
    case tooLarge(what: String, limit: Int64)
    case folderNotFound(path: String)
    case invalidPattern(line: Int, pattern: String, reason: String)
    case io(path: String, reason: String)

    public var code: String {
        switch self {
        case .invalidEntry, .unreadable, .tooLarge: "BUILD_CONTEXT_INVALID"
        case .folderNotFound: "context_not_found"
        case .invalidPattern: "dockerignore_invalid"
        case .io: "context_io_error"
        }
    }

    public var message: String {
        switch self {
        case .invalidEntry(let entry, let reason): "the build context holds '\(entry.prefix(300))', which \(reason)"
        case .unreadable(let reason): "the build context cannot be read as a gzip'd tar: \(reason)"
        case .tooLarge(let what, let limit): "the build context has more than \(limit) \(what)"
        case .folderNotFound(let path): "there is no folder at \(path) to use as the build context"
        case .invalidPattern(let line, let pattern, let reason): ".dockerignore line \(line): '\(pattern)' is not a valid pattern (\(reason))"
        case .io(let path, let reason): "cannot read or write \(path): \(reason)"
        }
    }

    public var hint: String {
        switch self {
        case .invalidEntry: "Remove that file from the folder you deploy (or exclude it in .dockerignore): a build context may only hold regular files, folders and links that stay inside it."
        case .unreadable: "Deploy with 'loco deploy', which packs the folder itself; if you pack by hand, use 'tar czf'."
        case .tooLarge: "Exclude build outputs, dependencies and caches with a .dockerignore file."
        case .folderNotFound: "Check build.context in loco.toml; paths are relative to the loco.toml's folder."
        case .invalidPattern: "Fix the pattern: Docker's rules are *, ?, [ranges], ** for any folders, and ! to re-include."
        case .io: "Check the file's permissions and the free disk space."
        }
    }
}
