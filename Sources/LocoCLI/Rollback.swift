import ArgumentParser
import Foundation
import LocoShared
import NIOHTTP1

/// `loco rollback [ID]`: run an earlier deployment's images again, as `heroku rollback` does,
/// without building; followed to the end like a deploy.
struct Rollback: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an earlier deployment's images again, without a build (default: the last good one before the serving deployment).",
        discussion: "The new deployment uses that deployment's config and images and the app's env vars as they are now. Exit codes as for 'loco deploy'.")

    @Argument(help: "The deployment to run again (from 'loco deployments').") var id: Int64?
    @OptionGroup var start: StartOptions
    @OptionGroup var app: AppOptions
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let client = try global.client()
        let target: Int64
        if let id { target = id } else { target = try await previousGood(client) }
        let started = Date()
        let deployment = try await client.call(.POST, "/v1/deployments/\(target)/redeploy" + (start.waitInLine ? "?queue=true" : ""))
        guard let newID = deployment["id"]?.int else { throw CLIError("unexpected_answer", "the API did not return a deployment id", hint: "Run with --debug.") }
        if start.detach {
            if global.json { printJSON(deployment) } else { Out.line("Deployment \(newID) runs deployment \(target)'s images again. Follow it with: loco deployment show \(newID)") }
            return
        }
        if !global.json {
            let queued = deployment["queued_behind"]?.int.map { " (waits in line behind deployment \($0))" } ?? ""
            Out.line("Rolling \(deployment["app"]?.text ?? "") back to deployment \(target)'s images — deployment \(newID)\(queued)")
        }
        try await DeploymentWatch(global: global, nonInteractive: start.nonInteractive).run(client, id: newID, started: started)
    }

    /// The newest successful deployment before the one serving now.
    func previousGood(_ client: APIClient) async throws -> Int64 {
        let (name, _) = try app.resolve()
        let status = try await client.call(.GET, try app.path("/status"))
        guard let serving = status["current"]?["id"]?.int else {
            throw CLIError("nothing_to_roll_back", "\(name) serves no deployment yet, so there is nothing to roll back from",
                           hint: "Deploy with 'loco deploy'; 'loco rollback ID' runs a given deployment's images.")
        }
        let older = try await client.call(.GET, try app.path("/deployments", query: ["limit": "200", "before": String(serving)]))
        guard let previous = older.items.first(where: { $0["state"]?.stringValue == "succeeded" })?["id"]?.int else {
            throw CLIError("nothing_to_roll_back", "\(name) has no successful deployment before the serving one (\(serving))",
                           hint: "'loco deployments' lists them; 'loco rollback ID' runs a given deployment's images.")
        }
        return previous
    }
}
