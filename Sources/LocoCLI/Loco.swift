import ArgumentParser
import Foundation
import LocoShared

/// `loco`: deploy apps to Loco from a terminal or CI. Talks to the Loco API only.
struct Loco: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "loco",
        abstract: "Deploy apps to Loco: build, push, roll out, and say in plain words what happened.",
        discussion: """
            Exit codes: 0 ok, 1 deploy failed, 2 usage or config error, 3 auth, 4 cannot reach the API, 5 cancelled.
            """,
        version: version,
        subcommands: [
            Init.self, Validate.self, ConfigCommand.self,
            Login.self, Logout.self, Whoami.self, TokenCommand.self, TeamCommand.self,
            Deploy.self, Rollback.self, Restart.self, Status.self, Deployments.self, DeploymentCommand.self, Cancel.self,
            Logs.self, Env.self, Apps.self, Scale.self, Destroy.self, Completion.self,
        ]
    )
}

@main
enum Main {
    static func main() async {
        signal(SIGPIPE, SIG_IGN)
        let status: Int32
        do {
            var command = try Loco.parseAsRoot()
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
            status = 0
        } catch let error as CLIError {
            report(error)
            status = error.exit.rawValue
        } catch let error as ExitCode {
            status = error.rawValue
        } catch is CancellationError {
            status = ExitStatus.cancelled.rawValue
        } catch {
            // ArgumentParser's own: help and --version exit 0, usage errors exit 2.
            let code = Loco.exitCode(for: error)
            let message = Loco.fullMessage(for: error)
            if code == .success {
                if !message.isEmpty { Out.line(message) }
                status = 0
            } else {
                Out.error(message)
                status = code.rawValue == 1 ? 1 : ExitStatus.usage.rawValue
            }
        }
        exit(status)
    }

    static func report(_ error: CLIError) {
        let terminal = Terminal(isTTY: isatty(STDERR_FILENO) == 1, color: isatty(STDERR_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil)
        Out.error(terminal.red("Error: ") + error.message)
        Out.error(terminal.dim("hint: ") + error.hint)
    }
}
