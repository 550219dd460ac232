import LocoShared

/// Why a build failed, with the report code, the evidence and whether trying again may help.
public struct BuildFailure: CodedError, Equatable {
    public var code: String
    public var message: String
    public var hint: String
    /// The Dockerfile step that failed (`2/3`), its instruction, the exit code, the last lines.
    public var step: String?
    public var instruction: String?
    public var exitCode: Int32?
    public var logTail: [String]
    /// A builder problem (storage lock, disk full): retry; a Dockerfile problem: do not.
    public var isTransient: Bool

    static func dockerfileNotFound(_ path: String) -> BuildFailure {
        BuildFailure(code: "DOCKERFILE_NOT_FOUND", message: "there is no Dockerfile at \(path) in the build context",
                     hint: "Add a Dockerfile there, or point build.dockerfile in loco.toml at yours (relative to the context folder).",
                     logTail: [], isTransient: false)
    }

    static func timeout(_ seconds: Int64, tail: [String]) -> BuildFailure {
        BuildFailure(code: "BUILD_TIMEOUT", message: "the build took longer than \(seconds) seconds and was stopped",
                     hint: "Make the slow step faster (cache dependencies in an earlier layer), or ask your operator for a longer build timeout.",
                     logTail: tail, isTransient: false)
    }

    static func tooLarge(_ size: Int64, limit: Int64) -> BuildFailure {
        BuildFailure(code: "IMAGE_TOO_LARGE", message: "the image is \(size) bytes compressed, over the limit of \(limit) bytes",
                     hint: "Use a multi-stage build that copies only what runs, a smaller base image, and a .dockerignore for build outputs.",
                     logTail: [], isTransient: false)
    }
}
