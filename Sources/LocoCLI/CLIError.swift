import Foundation
import LocoShared

/// How `loco` ends. Documented in README.md; CI scripts rely on them.
enum ExitStatus: Int32 {
    case ok = 0
    case deployFailed = 1
    case usage = 2
    case auth = 3
    case unreachable = 4
    case cancelled = 5
}

/// An error `loco` shows a person: `Error: message` and a hint line on stderr, then its exit code.
struct CLIError: CodedError {
    var code: String
    var message: String
    var hint: String
    var exit: ExitStatus

    init(_ code: String, _ message: String, hint: String, exit: ExitStatus = .usage) {
        self.code = code
        self.message = message
        self.hint = hint
        self.exit = exit
    }

    static func notLoggedIn() -> CLIError {
        CLIError("not_logged_in", "you are not logged in", hint: "Run 'loco login' (or set LOCO_TOKEN; in CI pass --token).", exit: .auth)
    }

    static func unreachable(_ api: String, _ reason: String) -> CLIError {
        CLIError("api_unreachable", "cannot reach the Loco API at \(api): \(reason)",
                 hint: "Check the address (--api, LOCO_API or 'loco login --api URL') and that 'locod api' runs there.", exit: .unreachable)
    }
}
