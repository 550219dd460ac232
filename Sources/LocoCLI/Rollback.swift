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
        let (name, _) = try app.resolve()
        let target: Int64
        if let id { target = id } else { target = try await previousGood(client, name: name) }
        try await Redeploy(start: start, global: global).run(client, of: target, saying: "Rolling \(name) back to deployment \(target)'s images",
                                                             reason: "rollback to \(target)")
    }

    /// The newest successful deployment before the one serving now that ran other images: a
    /// restart or an unchanged redeploy in between is the same version, not the one before.
    func previousGood(_ client: APIClient, name: String) async throws -> Int64 {
        let (servingID, serving) = try await Redeploy.serving(client, app: app, name: name)
        let older = try await client.call(.GET, try app.path("/deployments", query: ["limit": "200", "before": String(servingID)]))
        let previous = older.items.first {
            $0["state"]?.stringValue == "succeeded" && ($0["images"] != serving["images"] || $0["image_ref"] != serving["image_ref"])
        }
        guard let id = previous?["id"]?.int else {
            throw CLIError("nothing_to_roll_back", "\(name) has no earlier successful deployment with other images than the serving one (\(servingID))",
                           hint: "'loco deployments' lists them; 'loco rollback ID' runs a given deployment's images.")
        }
        return id
    }
}

/// `loco restart`: the serving version again (`fly apps restart`, `heroku restart`), so env vars
/// set since it started take effect; no build.
struct Restart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the serving version again, without a build, so env var changes take effect.",
        discussion: "A new deployment of the serving deployment's images and config; the old containers stop once the new ones serve. Exit codes as for 'loco deploy'.")

    @OptionGroup var start: StartOptions
    @OptionGroup var app: AppOptions
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let client = try global.client()
        let (name, _) = try app.resolve()
        let serving = try await Redeploy.serving(client, app: app, name: name).id
        try await Redeploy(start: start, global: global).run(client, of: serving, saying: "Restarting \(name) (deployment \(serving)'s images)", reason: "restart")
    }
}

/// Starts a redeploy of one deployment and follows it like a deploy.
struct Redeploy {
    let start: StartOptions
    let global: GlobalOptions
    var wrapJSON: @Sendable (JSONValue) -> JSONValue = { $0 }

    /// `reason` goes into the history (`loco deployments`).
    func run(_ client: APIClient, of target: Int64, saying what: String, reason: String) async throws {
        let started = Date()
        var query = ["reason": String(reason.prefix(120))]
        if start.waitInLine { query["queue"] = "true" }
        let deployment = try await client.call(.POST, "/v1/deployments/\(target)/redeploy" + queryString(query))
        try await DeploymentWatch(global: global, start: start, wrapJSON: wrapJSON).follow(client, accepted: deployment, saying: what, started: started)
    }

    /// The deployment serving the app now: its id and its document.
    static func serving(_ client: APIClient, app: AppOptions, name: String) async throws -> (id: Int64, deployment: JSONValue) {
        let status = try await client.call(.GET, try app.path("/status"))
        guard let serving = status["current"], let id = serving["id"]?.int else {
            throw CLIError("nothing_serving", "\(name) serves no deployment yet", hint: "Deploy it with 'loco deploy'; 'loco rollback ID' runs a given deployment's images.")
        }
        return (id, serving)
    }
}
