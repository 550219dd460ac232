import Foundation
import LocoCore
import LocoQueue
import LocoTestSupport
import PostgresNIO
import Testing

/// The real `loco` binary against the real `locod api`, workers, registry, buildah and podman.
@Suite("loco CLI, end to end", .serialized)
struct CLITests {
    struct CLI {
        let binary: URL
        let environment: [String: String]

        func run(_ arguments: [String], extra: [String: String] = [:], timeout: Duration = .seconds(240)) async throws -> (status: Int32, output: String) {
            try await runCommand(binary, arguments, environment: environment.merging(extra) { $1 }, timeout: timeout)
        }

        /// Runs and parses stdout+stderr as one JSON document (commands print nothing else with -o json).
        func json(_ arguments: [String], extra: [String: String] = [:]) async throws -> (status: Int32, value: JSONValue) {
            let result = try await run(arguments + ["-o", "json"], extra: extra)
            guard let value = JSONValue.parse(result.output) else { throw TestSetupError("not JSON (exit \(result.status)): \(result.output.suffix(3000))") }
            return (result.status, value)
        }
    }

    static func curl(_ url: String) async throws -> String {
        try await runCommand(URL(fileURLWithPath: "/usr/bin/curl"), ["-s", "-m", "5", url]).output
    }

    /// podman on the storage and settings of the stack's workers.
    static func podman(_ stack: LocoStack, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let state = stack.folder.appending(path: "work/podman")
        return try await runCommand(URL(fileURLWithPath: "/usr/bin/podman"), arguments,
                                    environment: ["CONTAINERS_CONF": state.appending(path: "containers.conf").path,
                                                  "CONTAINERS_STORAGE_CONF": state.appending(path: "storage.conf").path,
                                                  "CONTAINERS_REGISTRIES_CONF": state.appending(path: "registries.conf").path])
    }

    @Test("every command against a running Loco: login, config, deploy and redeploy, failures with their exit codes, logs, env, tokens, cancel, destroy")
    func endToEnd() async throws {
        try await TestDatabase.with(migrations: []) { db in
            try await LocoStack.with(db: db) { stack in
                let home = stack.folder.appending(path: "home")
                let cli = CLI(binary: try Repo.binary("loco"), environment: ["XDG_CONFIG_HOME": home.path, "HOME": home.path, "LOCO_API": "", "LOCO_TOKEN": ""])

                // Version, usage errors, no login yet, an API that is not there.
                #expect(try await cli.run(["--version"]).output.contains("0.1.0"))
                #expect(try await cli.run(["deploy", "--bogus"]).status == 2)
                let anonymous = try await cli.run(["whoami", "--api", stack.base])
                #expect(anonymous.status == 3 && anonymous.output.contains("not logged in") && anonymous.output.contains("hint: Run 'loco login'"), "\(anonymous.output)")
                let nowhere = try await cli.run(["whoami", "--api", "http://127.0.0.1:1", "--token", stack.token])
                #expect(nowhere.status == 4 && nowhere.output.contains("cannot reach the Loco API at http://127.0.0.1:1"), "\(nowhere.output)")
                let wrong = try await cli.run(["login", "--api", stack.base, "--token", "loco_pat_wrong"])
                #expect(wrong.status == 3, "\(wrong.output)")
                #expect(!wrong.output.contains("loco_pat_wrong"), "a token never shows in messages")

                // Login saves the token 0600; whoami uses it.
                let login = try await cli.run(["login", "--api", stack.base, "--token", stack.token])
                #expect(login.status == 0 && login.output.contains("ann@example.com"), "\(login.output)")
                let saved = home.appending(path: "loco/credentials.json")
                let mode = (try FileManager.default.attributesOfItem(atPath: saved.path)[.posixPermissions] as? NSNumber)?.intValue
                #expect(mode == 0o600)
                let me = try await cli.json(["whoami"])
                #expect(me.status == 0 && me.value["user"]?["email"]?.stringValue == "ann@example.com" && me.value["teams"]?.items.count == 1)

                // Config: validate, show, an invalid file, a missing Dockerfile.
                let hello = try stack.example("hello", as: "hello")
                let config = hello.appending(path: "loco.toml").path
                #expect(try await cli.run(["validate", "--config", config]).status == 0)
                let shown = try await cli.json(["config", "show", "--config", config])
                #expect(shown.value["run"]?["port"]?.int == 8080 && shown.value["resources"]?["memory"]?.stringValue == "256Mi")
                let humanShow = try await cli.run(["config", "show", "--config", config])
                #expect(humanShow.output.contains("[run]") && humanShow.output.contains("port = 8080"), "\(humanShow.output)")
                let bad = stack.folder.appending(path: "bad")
                try FileManager.default.createDirectory(at: bad, withIntermediateDirectories: true)
                try "version = 1\nname = \"bad\"\n[run]\nport = 80\n".write(to: bad.appending(path: "loco.toml"), atomically: true, encoding: .utf8)
                let invalid = try await cli.run(["deploy", "--config", bad.appending(path: "loco.toml").path])
                #expect(invalid.status == 2 && invalid.output.contains("run.port: 80 is below 1024 (line 4)"), "\(invalid.output)")
                let noDockerfile = try await cli.run(["deploy", "--config", bad.appending(path: "loco.toml").path.replacingOccurrences(of: "bad/loco.toml", with: "bad/loco.toml")],
                                                     extra: [:])
                #expect(noDockerfile.status == 2)
                try "version = 1\nname = \"bad\"\n".write(to: bad.appending(path: "loco.toml"), atomically: true, encoding: .utf8)
                let missing = try await cli.run(["deploy", "--config", bad.appending(path: "loco.toml").path])
                #expect(missing.status == 2 && missing.output.contains("Dockerfile does not exist"), "\(missing.output)")
                let badApp = try await cli.run(["deploy", "--config", config, "--app", "Shop!"])
                #expect(badApp.status == 2 && badApp.output.contains("--app \"Shop!\" is not a valid app name") && badApp.output.contains("hint: "), "\(badApp.output)")

                // Apps made before their first deploy (to set env first): from loco.toml, or by
                // name. Nothing serves them yet, so there is nothing to restart or roll back.
                let made = try await cli.run(["apps", "create", "--config", config])
                #expect(made.status == 0 && made.output.contains("Created app acme/hello (service).")
                        && made.output.contains("'loco env set KEY=value'"), "\(made.output)")
                let fresh = try await cli.json(["apps", "create", "fresh", "--type", "static"])
                #expect(fresh.status == 0 && fresh.value["name"]?.stringValue == "fresh" && fresh.value["team"]?.stringValue == "acme"
                        && fresh.value["type"]?.stringValue == "static", "\(fresh.value)")
                let twice = try await cli.run(["apps", "create", "fresh"])
                #expect(twice.status != 0 && twice.output.contains("an app named 'fresh' already exists"), "\(twice.output)")
                let badAppName = try await cli.run(["apps", "create", "Fresh!"])
                #expect(badAppName.status == 2 && badAppName.output.contains("\"Fresh!\" is not a valid app name"), "\(badAppName.output)")
                let badType = try await cli.run(["apps", "create", "other", "--type", "lambda"])
                #expect(badType.status != 0 && badType.output.contains("'lambda' is not an app type") && badType.output.contains("service, static"), "\(badType.output)")
                let freshEnv = try await cli.run(["env", "set", "A=1", "--app", "fresh"])
                #expect(freshEnv.status == 0 && freshEnv.output.contains("They apply from the app's first deploy"), "\(freshEnv.output)")
                for command in ["restart", "rollback"] {
                    let idle = try await cli.run([command, "--app", "fresh"])
                    #expect(idle.status == 2 && idle.output.contains("fresh serves no deployment yet") && idle.output.contains("loco deploy"), "\(idle.output)")
                }
                let unknownApp = try await cli.run(["env", "list", "--app", "nosuch"])
                #expect(unknownApp.status != 0 && unknownApp.output.contains("no app named 'nosuch'")
                        && unknownApp.output.contains("'loco apps create NAME'"), "\(unknownApp.output)")
                #expect(try await cli.run(["destroy", "--yes", "--app", "fresh"]).status == 0)

                // A deploy followed to the end: the URL serves. Its one version has nothing before it.
                let first = try await cli.json(["deploy", "--config", config])
                #expect(first.status == 0 && first.value["state"]?.stringValue == "succeeded", "\(first.value)\n\(stack.workers.output.suffix(3000))")
                let url = try #require(first.value["url"]?.stringValue)
                #expect(try await Self.curl(url).contains("Hello from Loco"))
                let noEarlier = try await cli.run(["rollback", "--config", config])
                #expect(noEarlier.status == 2 && noEarlier.output.contains("hello has no earlier successful deployment with other images")
                        && noEarlier.output.contains("loco rollback ID"), "\(noEarlier.output)")

                // Unchanged: no layer bytes move. Human output names the stages and ends with the URL.
                let again = try await cli.run(["deploy", "--config", config])
                #expect(again.status == 0, "\(again.output)")
                #expect(again.output.contains("uploaded 0 blobs (0 bytes)"), "an unchanged redeploy uploads nothing: \(again.output)")
                #expect(again.output.contains("✔ build") && again.output.contains("✔ wait") && again.output.contains(url), "\(again.output)")
                #expect(!again.output.contains("\u{1B}["), "no colour or cursor codes when not on a terminal")

                // Changed: the same address serves the new page; NDJSON has one event per line.
                try "<h1>Version two</h1>\n".write(to: hello.appending(path: "public/index.html"), atomically: true, encoding: .utf8)
                let second = try await cli.run(["deploy", "--config", config, "-o", "ndjson"])
                #expect(second.status == 0, "\(second.output)")
                let lines = second.output.split(separator: "\n").map { JSONValue.parse(String($0)) }
                #expect(!lines.isEmpty && lines.allSatisfy { $0 != nil }, "\(second.output)")
                let stages = lines.compactMap { $0?["type"]?.stringValue == "stage_finished" ? $0?["stage"]?.stringValue : nil }
                #expect(stages.starts(with: ["build", "push", "apply", "wait"]), "\(stages)")
                #expect(lines.last??["deployment"]?["state"]?.stringValue == "succeeded")
                #expect(try await Self.curl(url).contains("Version two"))

                // Status, history, one deployment, build logs, app logs.
                let status = try await cli.json(["status", "--config", config])
                #expect(status.value["current"]?["url"]?.stringValue == url && status.value["app"]?["name"]?.stringValue == "hello")
                let humanStatus = try await cli.run(["status", "--config", config])
                #expect(humanStatus.output.contains("url:        \(url)") && humanStatus.output.contains("service:    web at / (1 replica, 256Mi memory)"),
                        "\(humanStatus.output)")
                let history = try await cli.json(["deployments", "--config", config])
                #expect(history.value.items.count == 3 && history.value.items.allSatisfy { $0["state"]?.stringValue == "succeeded" })
                let lastID = try #require(history.value.items.first?["id"]?.int)
                // Pages: a full page names the next one; --before gets it.
                let ids = history.value.items.compactMap { $0["id"]?.int }
                let firstPage = try await cli.run(["deployments", "--config", config, "--limit", "2"])
                #expect(firstPage.output.contains("loco deployments --before \(ids[1])"), "\(firstPage.output)")
                let olderPage = try await cli.json(["deployments", "--config", config, "--limit", "2", "--before", "\(ids[1])"])
                #expect(olderPage.value.items.compactMap { $0["id"]?.int } == [ids[2]], "\(olderPage.value)")
                let badLimit = try await cli.run(["deployments", "--config", config, "--limit", "0"])
                #expect(badLimit.status == 2 && badLimit.output.contains("--limit must be from 1 to 200"), "\(badLimit.output)")

                // Rollback: the deployment before the serving one runs again, without a build;
                // then forward again by id.
                let rolledBack = try await cli.run(["rollback", "--config", config])
                #expect(rolledBack.status == 0 && rolledBack.output.contains("Rolling hello back to deployment \(ids[1])'s images")
                        && rolledBack.output.contains("apply started") && !rolledBack.output.contains("build of web started"), "\(rolledBack.output)")
                #expect(try await Self.curl(url).contains("Hello from Loco"), "the version before serves again")
                let forward = try await cli.json(["rollback", "\(ids[0])", "--config", config])
                #expect(forward.status == 0 && forward.value["state"]?.stringValue == "succeeded" && forward.value["redeploy_of"]?.int == ids[0]
                        && forward.value["images"] == history.value.items.first?["images"] && forward.value["stages"]?["build"] == nil, "\(forward.value)")
                #expect(try await Self.curl(url).contains("Version two"))
                let forwardID = try #require(forward.value["id"]?.int)
                let shownForward = try await cli.run(["deployment", "show", "\(forwardID)"])
                #expect(shownForward.output.contains("(deployment \(ids[0])'s, run again: no build)") && shownForward.output.contains("why      rollback to \(ids[0])"),
                        "\(shownForward.output)")
                let listed = try await cli.run(["deployments", "--config", config, "--limit", "1"])
                #expect(listed.output.contains("\(forwardID)\tsucceeded") && listed.output.contains("\trollback to \(ids[0])\t\(url) (\(ids[0])'s images)"), "\(listed.output)")
                let shownDeployment = try await cli.run(["deployment", "show", "\(lastID)"])
                #expect(shownDeployment.output.contains("Deployment \(lastID)") && shownDeployment.output.contains("build"), "\(shownDeployment.output)")
                let buildLog = try await cli.run(["logs", "--deployment", "\(lastID)"])
                #expect(buildLog.output.contains("STEP 1/4: FROM"), "\(buildLog.output)")
                let noSuchDeployment = try await cli.run(["logs", "--deployment", "99999"])
                #expect(noSuchDeployment.status == 2 && noSuchDeployment.output.contains("no deployment 99999")
                        && noSuchDeployment.output.contains("'loco deployments' lists the app's deployments"), "\(noSuchDeployment.output)")
                let appLogs = try await cli.run(["logs", "--config", config, "--tail", "20", "-o", "json"])
                let logLines = appLogs.output.split(separator: "\n").compactMap { JSONValue.parse(String($0)) }
                #expect(appLogs.status == 0 && !logLines.isEmpty && logLines.allSatisfy { $0["service"]?.stringValue == "web" }, "\(appLogs.output)")
                let yank = try await cli.run(["logs", "yank", "--config", config])
                if case .array(let all)? = JSONValue.parse(yank.output) { #expect(!all.isEmpty) } else { Issue.record("yank is not a JSON array: \(yank.output)") }

                // Env: values hidden unless revealed.
                // Set on a serving app: it runs again with them at once (as heroku config:set does).
                let beforeSet = try #require(try await cli.json(["status", "--config", config]).value["current"]?["id"]?.int)
                let setEnv = try await cli.run(["env", "set", "GREETING=hi", "MODE=test", "--config", config])
                #expect(setEnv.status == 0 && setEnv.output.contains("Set GREETING, MODE.") && setEnv.output.contains("Restarting hello so they apply (deployment \(beforeSet)'s images)")
                        && setEnv.output.contains("✔ Deployed hello"), "\(setEnv.output)")
                let afterSet = try #require(try await cli.json(["status", "--config", config]).value["current"]?["id"]?.int)
                let history2 = try await cli.run(["deployments", "--config", config, "--limit", "1"])
                #expect(history2.output.contains("\(afterSet)\tsucceeded") && history2.output.contains("\tenv: set GREETING, MODE\t"), "\(history2.output)")
                let withEnv = try await Self.podman(stack, ["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", "loco-acme-hello-d\(afterSet)-web"])
                #expect(afterSet > beforeSet && withEnv.output.contains("GREETING=hi"), "\(withEnv.output)")
                // --stage only saves; -o json gives the variables (and the restart's deployment, here none).
                let staged = try await cli.json(["env", "set", "LATER=1", "--stage", "--config", config])
                #expect(staged.status == 0 && staged.value["deployment"] == .null && staged.value.items.count == 3, "\(staged.value)")
                #expect(try await cli.run(["env", "unset", "LATER", "--stage", "--config", config]).output.contains("Staged: they apply from the next deploy or 'loco restart'."))
                let hidden = try await cli.json(["env", "list", "--config", config])
                #expect(hidden.value.items.map { $0["name"]?.stringValue } == ["GREETING", "MODE"] && hidden.value.items.allSatisfy { $0["value"] == nil || $0["value"] == .null })
                let revealed = try await cli.json(["env", "list", "--reveal", "--config", config])
                #expect(revealed.value.items.first?["value"]?.stringValue == "hi")
                try "A=1\nexport B=\"two words\"\n# comment\n".write(to: hello.appending(path: ".env.test"), atomically: true, encoding: .utf8)
                #expect(try await cli.run(["env", "import", hello.appending(path: ".env.test").path, "--stage", "--config", config]).status == 0)
                #expect(try await cli.run(["env", "unset", "MODE", "--stage", "--config", config]).status == 0)
                #expect(try await cli.json(["env", "list", "--config", config]).value.items.count == 3)
                // 'loco env' alone lists, as 'loco env list' does.
                #expect(try await cli.json(["env", "--config", config]).value.items.count == 3)
                let noSuchVar = try await cli.run(["env", "unset", "NOPE", "--config", config])
                #expect(noSuchVar.output.contains("no env var named 'NOPE'") && noSuchVar.output.contains("'loco env' lists the app's variables"), "\(noSuchVar.output)")
                // Restart: the serving version again, no build, and its container has today's env.
                let servingID = try #require(try await cli.json(["status", "--config", config]).value["current"]?["id"]?.int)
                let restarted = try await cli.json(["restart", "--config", config])
                let restartedID = try #require(restarted.value["id"]?.int)
                #expect(restarted.status == 0 && restarted.value["state"]?.stringValue == "succeeded" && restarted.value["redeploy_of"]?.int == servingID
                        && restarted.value["stages"]?["build"] == nil, "\(restarted.value)")
                #expect(try await Self.curl(url).contains("Version two"))
                let inspected = try await Self.podman(stack, ["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", "loco-acme-hello-d\(restartedID)-web"])
                #expect(inspected.output.contains("GREETING=hi") && inspected.output.contains("B=two words") && !inspected.output.contains("MODE=test"), "\(inspected.output)")

                // A broken Dockerfile: exit 1, the report with its next step; the previous version serves on.
                let broken = try stack.example("broken-dockerfile", as: "hello")
                let failed = try await cli.run(["deploy", "--config", broken.appending(path: "loco.toml").path])
                #expect(failed.status == 1 && failed.output.contains("BUILD_FAILED") && failed.output.contains("Next: "), "\(failed.output)")
                #expect(try await Self.curl(url).contains("Version two"))

                // CI: a deploy token, non-interactive, detached; an expired one is refused with exit 3.
                let created = try await cli.json(["token", "create", "--kind", "deploy", "--config", config])
                let deployToken = try #require(created.value["secret"]?.stringValue)
                let detached = try await cli.json(["deploy", "--config", config, "--token", deployToken, "--non-interactive", "--detach"])
                #expect(detached.status == 0 && detached.value["id"]?.int != nil, "\(detached.value)")
                let detachedID = try #require(detached.value["id"]?.int)
                let ended = try await eventually(timeout: .seconds(120), every: .milliseconds(300)) {
                    let shown = try await cli.json(["deployment", "show", "\(detachedID)"])
                    return shown.value["state"]?.stringValue == "succeeded"
                }
                #expect(ended)
                _ = try await db.client.query("UPDATE loco_tokens SET expires_at = now() - interval '1 minute' WHERE kind = 'deploy'")
                // (an API process trusts a token lookup for up to 5 s)
                var expired = (status: Int32(0), output: "")
                _ = try await eventually(timeout: .seconds(15), every: .milliseconds(500)) {
                    expired = try await cli.run(["status", "--config", config, "--token", deployToken])
                    return expired.status != 0
                }
                #expect(expired.status == 3 && expired.output.contains("expired"), "\(expired.output)")
                let tokens = try await cli.json(["token", "list"])
                #expect(tokens.value.items.contains { $0["kind"]?.stringValue == "deploy" })
                #expect(!tokens.value.jsonText.contains(deployToken))
                let deployTokenID = try #require(created.value["token"]?["id"]?.int)
                #expect(try await cli.run(["token", "revoke", "\(deployTokenID)"]).status == 0)
                let afterRevoke = try await cli.json(["token", "list"])
                #expect(afterRevoke.value.items.first { $0["id"]?.int == deployTokenID }?["revoked_at"]?.stringValue != nil)

                // --debug: a log of the requests, its path printed, no token in it.
                let debugged = try await cli.run(["whoami", "--debug"])
                let logPath = try #require(debugged.output.firstMatch(of: #/debug log: (\S+)/#).map { String($0.1) }, "\(debugged.output)")
                let logText = try String(contentsOfFile: logPath, encoding: .utf8)
                #expect(logText.contains("GET \(stack.base)/v1/whoami") && !logText.contains(stack.token), "\(logText)")
                try? FileManager.default.removeItem(atPath: logPath)

                // init without a terminal: flags and what it detects.
                let plain = stack.folder.appending(path: "plain-app")
                try FileManager.default.createDirectory(at: plain, withIntermediateDirectories: true)
                try "FROM scratch\nEXPOSE 4000/tcp\n".write(to: plain.appending(path: "Dockerfile"), atomically: true, encoding: .utf8)
                let initialised = try await runCommand(URL(fileURLWithPath: "/bin/bash"), ["-c", "cd '\(plain.path)' && '\(cli.binary.path)' init --name plain --health /up"],
                                                       environment: cli.environment)
                #expect(initialised.status == 0, "\(initialised.output)")
                let plainConfig = try await cli.json(["config", "show", "--config", plain.appending(path: "loco.toml").path])
                #expect(plainConfig.value["name"]?.stringValue == "plain" && plainConfig.value["run"]?["port"]?.int == 4000
                        && plainConfig.value["run"]?["health"]?.stringValue == "/up", "\(plainConfig.value)")


                // Cancel during the build: nothing of it is left running.
                let slow = try stack.example("hello", as: "hello", edit: ["Dockerfile": "ARG BASE\nFROM ${BASE}\nRUN sleep 60\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\"]\n"])
                let slowRun = try await cli.json(["deploy", "--config", slow.appending(path: "loco.toml").path, "--detach"])
                let slowID = try #require(slowRun.value["id"]?.int)
                let building = try await eventually(timeout: .seconds(60), every: .milliseconds(200)) {
                    try await cli.json(["deployment", "show", "\(slowID)"]).value["state"]?.stringValue == "building"
                }
                #expect(building)
                let cancelled = try await cli.json(["cancel", "--config", config])
                #expect(cancelled.status == 0 && cancelled.value["state"]?.stringValue == "cancelled", "\(cancelled.value)")
                let quiet = try await eventually(timeout: .seconds(30), every: .milliseconds(300)) {
                    let buildahs = try await runCommand(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "sleep 60"]).output
                    let jobs = try await db.scalar("SELECT count(*) FROM loco_jobs WHERE state IN ('running','available','scheduled','blocked')", as: Int64.self)
                    return buildahs.isEmpty && jobs == 0
                }
                #expect(quiet, "the build stopped and no job is left")
                let untouched = try await Self.curl(url)
                // What served instead, if anything (seen once in a full CI run, not reproduced).
                let statusThen = untouched.contains("Version two") ? "" : try await cli.run(["status", "--config", config]).output
                #expect(untouched.contains("Version two"), "the serving version is untouched: \(untouched.prefix(300)) — \(statusThen)")
                // A deployment cancelled before its push has no image to run again.
                let noImage = try await cli.run(["rollback", "\(slowID)", "--config", config])
                #expect(noImage.status != 0 && noImage.output.contains("deployment \(slowID) cannot run again: it has no pushed image for web")
                        && noImage.output.contains("deploy from source with 'loco deploy'"), "\(noImage.output)")

                // Bad input to the CLI itself: exit 2, what is wrong and what to do.
                let badPair = try await cli.run(["env", "set", "NOEQUALS", "--config", config])
                #expect(badPair.status == 2 && badPair.output.contains("'NOEQUALS' is not NAME=value") && badPair.output.contains("hint: "), "\(badPair.output)")
                try "GOOD=1\nthis line is wrong\n".write(to: hello.appending(path: ".env.bad"), atomically: true, encoding: .utf8)
                let badFile = try await cli.run(["env", "import", hello.appending(path: ".env.bad").path, "--config", config])
                #expect(badFile.status == 2 && badFile.output.contains("line 2 is not NAME=value"), "\(badFile.output)")
                let badShell = try await cli.run(["completion", "tcsh"])
                #expect(badShell.status == 2 && badShell.output.contains("Use bash, zsh or fish"), "\(badShell.output)")
                let noToken = try await cli.run(["login", "--api", stack.base], extra: ["LOCO_TOKEN": ""])
                #expect(noToken.status == 2 && noToken.output.contains("no token given"), "\(noToken.output)")

                // Apps, destroy, completion, logout.
                #expect(try await cli.json(["apps"]).value.items.map { $0["name"]?.stringValue } == ["hello"])
                #expect(try await cli.run(["destroy", "--config", config]).status == 2, "destroy asks, or wants --yes")
                #expect(try await cli.run(["destroy", "--yes", "--config", config]).status == 0)
                let gone = try await eventually(timeout: .seconds(30), every: .milliseconds(300)) { try await Self.curl(url).isEmpty }
                #expect(gone, "nothing serves the destroyed app")
                #expect(try await cli.run(["completion", "bash"]).output.contains("_loco"))

                // Teams: list, members, add and change a role, remove; a second team needs --team.
                let teams = try await cli.run(["team"])
                #expect(teams.status == 0 && teams.output.contains("acme\towner"), "\(teams.output)")
                let added = try await cli.run(["team", "add", "bob@example.com", "--role", "viewer"])
                #expect(added.status == 0 && added.output.contains("bob@example.com is a viewer of team acme"), "\(added.output)")
                _ = try await cli.run(["team", "add", "bob@example.com", "--role", "admin"])
                let members = try await cli.json(["team", "members"])
                #expect(members.value.items.map { "\($0["email"]?.stringValue ?? ""):\($0["role"]?.stringValue ?? "")" }.sorted()
                        == ["ann@example.com:owner", "bob@example.com:admin"], "\(members.value)")
                let nobody = try await cli.run(["team", "add", "nobody@example.com"])
                #expect(nobody.status != 0 && nobody.output.contains("no user named 'nobody@example.com'") && nobody.output.contains("locod admin create-user"), "\(nobody.output)")
                let badRole = try await cli.run(["team", "add", "bob@example.com", "--role", "boss"])
                #expect(badRole.status == 2 && badRole.output.contains("'owner', 'admin', 'developer' or 'viewer'"), "\(badRole.output)")
                let lastOwner = try await cli.run(["team", "remove", "ann@example.com"])
                #expect(lastOwner.status != 0 && lastOwner.output.contains("without an owner"), "\(lastOwner.output)")
                #expect(try await cli.run(["team", "remove", "bob@example.com"]).output.contains("Removed bob@example.com from team acme"))
                #expect(try await cli.json(["team", "members"]).value.items.count == 1)
                #expect(try await cli.run(["team", "create", "beta"]).output.contains("Created team beta; you are its owner"))
                let which = try await cli.run(["team", "members"])
                #expect(which.status == 2 && which.output.contains("you are in 2 teams (acme, beta)") && which.output.contains("--team"), "\(which.output)")
                #expect(try await cli.json(["team", "members", "--team", "beta"]).value.items.count == 1)
                // A reader that has gone (`loco deployments | head`): loco ends by SIGPIPE, as any
                // Unix tool does; it once trapped in FileHandle and printed a crash backtrace.
                let piped = try await runCommand(URL(fileURLWithPath: "/usr/bin/python3"), ["-c", """
                    import os, subprocess, sys
                    r, w = os.pipe(); os.close(r)
                    p = subprocess.run(sys.argv[1:], stdout=w, stderr=subprocess.PIPE)
                    print("exit", p.returncode, p.stderr.decode()[-500:])
                    """, cli.binary.path, "config", "show", "--config", config], environment: cli.environment)
                #expect(piped.output.hasPrefix("exit -13") && !piped.output.contains("Fatal error"), "\(piped.output)")
                #expect(try await cli.run(["logout"]).status == 0)
                #expect(try await cli.run(["whoami"]).status == 3)
            }
        }
    }

    @Test("a two-service app answers on both prefixes through one port; apps that crash, never get ready or run out of memory end in their reports while the previous version serves")
    func servicesAndFailures() async throws {
        try await TestDatabase.with(migrations: []) { db in
            try await LocoStack.with(db: db) { stack in
                let home = stack.folder.appending(path: "home")
                let cli = CLI(binary: try Repo.binary("loco"), environment: ["XDG_CONFIG_HOME": home.path, "HOME": home.path,
                                                                             "LOCO_API": stack.base, "LOCO_TOKEN": stack.token])
                let base = "oci-archive:\(stack.baseImage.path)"
                let two = try stack.example("two-services", as: "shop", fullToml: """
                    version = 1
                    name = "shop"
                    [[services]]
                    name = "api"
                    path = "/api"
                    [services.build]
                    args = { BASE = "\(base)" }
                    [services.run]
                    health = "/api/"
                    [[services]]
                    name = "web"
                    path = "/"
                    [services.build]
                    args = { BASE = "\(base)" }
                    """)
                let shop = try await cli.json(["deploy", "--config", two.appending(path: "loco.toml").path])
                #expect(shop.status == 0 && shop.value["state"]?.stringValue == "succeeded", "\(shop.value)\n\(stack.workers.output.suffix(3000))")
                let url = try #require(shop.value["url"]?.stringValue)
                #expect(try await Self.curl(url + "/api/").contains("hello from the api service"))
                #expect(try await Self.curl(url + "/").contains("Hello from the web service"))
                #expect(try await Self.curl(url + "/nothing-here").contains("404"), "paths outside /api go to web")
                #expect(shop.value["images"]?["api"] != shop.value["images"]?["web"], "each service runs its own image")
                // Status names each service's image; logs narrow to one service, and a service the app
                // does not have is named as such.
                let shopToml = two.appending(path: "loco.toml").path
                let shopStatus = try await cli.run(["status", "--config", shopToml])
                let apiImage = try #require(shop.value["images"]?["api"]?.stringValue), webImage = try #require(shop.value["images"]?["web"]?.stringValue)
                #expect(shopStatus.output.contains("service:    api at /api (1 replica, 256Mi memory)\n    image:    \(apiImage)")
                        && shopStatus.output.contains("    image:    \(webImage)") && !shopStatus.output.contains("  image:      "), "\(shopStatus.output)")
                let apiLogs = try await cli.run(["logs", "--service", "api", "--config", shopToml, "-o", "json"])
                let apiLines = apiLogs.output.split(separator: "\n").compactMap { JSONValue.parse(String($0)) }
                #expect(apiLogs.status == 0 && !apiLines.isEmpty && apiLines.allSatisfy { $0["service"]?.stringValue == "api" }, "\(apiLogs.output)")
                let allLogs = try await cli.run(["logs", "--config", shopToml, "-o", "json"])
                let allServices = Set(allLogs.output.split(separator: "\n").compactMap { JSONValue.parse(String($0))?["service"]?.stringValue })
                #expect(allServices == ["api", "web"], "without --service, every service's lines: \(allLogs.output.suffix(500))")
                let noService = try await cli.run(["logs", "--service", "nope", "--config", shopToml])
                #expect(noService.status != 0 && noService.output.contains("'nope' is not a service of shop") && noService.output.contains("Its services: api, web."),
                        "\(noService.output)")
                // Scale: with several services one must be named; api alone then runs two.
                let unnamed = try await cli.run(["scale", "count", "2", "--config", shopToml])
                #expect(unnamed.status == 2 && unnamed.output.contains("shop has several services") && unnamed.output.contains("Name one: api, web"),
                        "\(unnamed.output)")
                let apiScaled = try await cli.run(["scale", "count", "2", "--service", "api", "--config", shopToml])
                #expect(apiScaled.status == 0 && apiScaled.output.contains("scaling api to 2 replicas") && apiScaled.output.contains("(2 replicas)"),
                        "\(apiScaled.output)")
                #expect(try await Self.curl(url + "/api/").contains("hello from the api service"))
                let shopScale = try await cli.json(["scale", "--config", shopToml])
                let counts = Dictionary(uniqueKeysWithValues: shopScale.value.items.map {
                    ($0["service"]?.stringValue ?? "", "\($0["replicas"]?.int ?? 0) \($0["source"]?.stringValue ?? "") \($0["running"]?.int ?? 0)")
                })
                #expect(counts == ["api": "2 loco scale 2", "web": "1 loco.toml 1"], "\(shopScale.value)")

                let hello = try stack.example("hello", as: "hello")
                let good = try await cli.json(["deploy", "--config", hello.appending(path: "loco.toml").path])
                let helloURL = try #require(good.value["url"]?.stringValue)
                #expect(try await Self.curl(helloURL).contains("Hello from Loco"))
                // A serving container that dies (killed here from outside) is started again by the
                // API's supervisor, on the same port: the app answers again without a deploy.
                let goodID = try #require(good.value["id"]?.int)
                let webName = "loco-acme-hello-d\(goodID)-web"
                let pid = try await Self.podman(stack, ["inspect", "--format", "{{.State.Pid}}", webName]).output.trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(try await runCommand(URL(fileURLWithPath: "/bin/kill"), ["-KILL", pid]).status == 0, "pid \(pid)")
                #expect(await eventually(timeout: .seconds(20), every: .milliseconds(250)) {
                    let listed = try? await cli.json(["status", "--config", hello.appending(path: "loco.toml").path]).value["instances"]?.items
                    guard listed?.first?["restarts"]?.int == 1, listed?.first?["state"]?.stringValue == "running" else { return false }
                    return ((try? await Self.curl(helloURL)) ?? "").contains("Hello from Loco")
                }, "restarted and answering")
                // `loco status` shows it, from the runtime (GET /v1/apps/{app}/instances).
                let afterKill = try await cli.run(["status", "--config", hello.appending(path: "loco.toml").path])
                #expect(afterKill.output.contains("instances:  web       running since ") && afterKill.output.contains("restarted 1 time (last exit code 137)"),
                        "\(afterKill.output)")
                let instances = try await cli.json(["status", "--config", hello.appending(path: "loco.toml").path]).value["instances"]?.items ?? []
                #expect(instances.first?["name"]?.stringValue == webName && instances.first?["restarts"]?.int == 1, "\(instances)")
                // A second exit in a row waits out the back-off (10 s), and `loco status` says so.
                let pidAgain = try await Self.podman(stack, ["inspect", "--format", "{{.State.Pid}}", webName]).output.trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(try await runCommand(URL(fileURLWithPath: "/bin/kill"), ["-KILL", pidAgain]).status == 0, "pid \(pidAgain)")
                var backingOff = ""
                #expect(await eventually(timeout: .seconds(8), every: .milliseconds(250)) {
                    backingOff = (try? await cli.run(["status", "--config", hello.appending(path: "loco.toml").path]).output) ?? ""
                    return backingOff.contains("(crash-loop back-off)")
                }, "\(backingOff)")
                #expect(backingOff.contains("instances:  web       exited (exit code 137), restarted 1 time; starts again in ")
                        && backingOff.contains("Next:       'loco logs' shows why web keeps exiting"), "\(backingOff)")
                #expect(await eventually(timeout: .seconds(30), every: .milliseconds(500)) {
                    let listed = try? await cli.json(["status", "--config", hello.appending(path: "loco.toml").path]).value["instances"]?.items
                    return listed?.first?["restarts"]?.int == 2 && listed?.first?["state"]?.stringValue == "running"
                }, "started again after its back-off")
                #expect(await eventually(timeout: .seconds(10), every: .milliseconds(250)) {
                    ((try? await Self.curl(helloURL)) ?? "").contains("Hello from Loco")
                }, "answering again")
                // Operators see the restarts on the API's /metrics.
                let scraped = try await Self.curl(stack.base + "/metrics")
                #expect(scraped.contains(#"loco_api_container_restarts_total{app="acme/hello",service="web"} 2"#), "\(scraped.prefix(2000))")
                // A follow runs until its client goes; then its podman processes go too (within
                // the API's 15 s keep-alive).
                let follow = try ChildProcess(cli.binary, ["logs", "--follow", "--config", hello.appending(path: "loco.toml").path], environment: cli.environment)
                let podmanFollows = { try await runCommand(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "logs --timestamps --follow.* \(webName)$"]).output }
                let attached = try await eventually(timeout: .seconds(20), every: .milliseconds(250)) { try await !podmanFollows().isEmpty }
                #expect(attached, "loco logs --follow runs podman logs --follow: \(follow.output)")
                _ = try await Self.curl(helloURL + "/while-followed")
                #expect(try await eventually(timeout: .seconds(10), every: .milliseconds(250)) { follow.output.contains("/while-followed") }, "\(follow.output)")
                follow.stop()
                let released = try await eventually(timeout: .seconds(40), every: .milliseconds(500)) { try await podmanFollows().isEmpty }
                #expect(released, "the follow's podman processes end after the client goes")
                // `loco logs` says what Loco did, marked as its own.
                let platform = try await cli.run(["logs", "--config", hello.appending(path: "loco.toml").path])
                #expect(platform.output.contains("loco[web] │ exited with code 137; started again (restart 1)")
                        && platform.output.contains("loco[web] │ exited with code 137; starts again in ")
                        && platform.output.contains("loco[web] │ started again after its back-off (restart 2)"), "\(platform.output)")
                let platformJSON = try await cli.run(["logs", "--config", hello.appending(path: "loco.toml").path, "-o", "json"])
                #expect(platformJSON.output.contains(#""line":"started again after its back-off (restart 2)""#) && platformJSON.output.contains(#""source":"loco""#),
                        "\(platformJSON.output)")
                // The examples that fail once started, each deployed as hello (`--app`) over its serving version.
                let failing: [(String, String, [String])] = [
                    ("crash-on-start", "CRASH_LOOP", ["exit code 3", "DATABASE_URL is not set"]),
                    ("never-ready", "READINESS_PROBE_FAILED", ["/healthz"]),
                    ("out-of-memory", "OOM_KILLED", ["32 MiB"]),
                ]
                for (example, code, evidence) in failing {
                    let folder = try stack.example(example, as: example, keepTables: true)
                    let result = try await cli.run(["deploy", "--config", folder.appending(path: "loco.toml").path, "--app", "hello"])
                    #expect(result.status == 1 && result.output.contains(code) && result.output.contains("Next: "), "\(code): \(result.output)")
                    for text in evidence + ["started web"] { #expect(result.output.contains(text), "\(code) shows \(text): \(result.output)") }
                    #expect(try await Self.curl(helloURL).contains("Hello from Loco"), "after \(code) the previous version serves")
                }
                let status = try await cli.json(["status", "--config", hello.appending(path: "loco.toml").path])
                #expect(status.value["last_failure"]?["report"]?["code"]?.stringValue == "OOM_KILLED")

                // Replicas: min_replicas = 2 runs two containers of web behind hello's address; with
                // one of them stopped, the other answers every request.
                let scaled = try stack.example("hello", as: "hello", toml: "[resources]\nmin_replicas = 2\nmax_replicas = 2")
                let scaledRun = try await cli.json(["deploy", "--config", scaled.appending(path: "loco.toml").path])
                #expect(scaledRun.status == 0 && scaledRun.value["state"]?.stringValue == "succeeded", "\(scaledRun.value)")
                let scaledID = try #require(scaledRun.value["id"]?.int)
                let replicas = try await Self.podman(stack, ["ps", "--format", "{{.Names}}", "--filter", "label=loco.deployment=\(scaledID)"])
                #expect(Set(replicas.output.split(separator: "\n").map(String.init)) == ["loco-acme-hello-d\(scaledID)-web", "loco-acme-hello-d\(scaledID)-web.r2"],
                        "\(replicas.output)")
                let scaledStatus = try await cli.run(["status", "--config", scaled.appending(path: "loco.toml").path])
                #expect(scaledStatus.output.contains("service:    web at / (2 replicas, 256Mi memory)"), "\(scaledStatus.output)")
                // Its output is said if it fails (it did once in a full run, and passed alone twice after).
                let stopped = try await Self.podman(stack, ["stop", "-t", "0", "loco-acme-hello-d\(scaledID)-web"])
                #expect(stopped.status == 0, "\(stopped.output)")
                for _ in 0..<6 { #expect(try await Self.curl(helloURL).contains("Hello from Loco"), "the second replica answers") }

                // `loco scale`: a count that holds over loco.toml's min_replicas for every later
                // rollout, rolled out at once without a build, until reset.
                let scaledToml = scaled.appending(path: "loco.toml").path
                let three = try await cli.run(["scale", "count", "3", "--config", scaledToml])
                #expect(three.status == 0 && three.output.contains("(3 replicas)") && !three.output.contains("build started"), "\(three.output)")
                let threeID = try #require(try await cli.json(["status", "--config", scaledToml]).value["current"]?["id"]?.int)
                let threeNames = try await Self.podman(stack, ["ps", "--format", "{{.Names}}", "--filter", "label=loco.deployment=\(threeID)"])
                #expect(threeNames.output.split(separator: "\n").count == 3 && threeNames.output.contains("-web.r3"), "\(threeNames.output)")
                #expect(try await cli.run(["status", "--config", scaledToml]).output.contains("(3 replicas by 'loco scale', 256Mi memory)"))
                let scaledHistory = try await cli.run(["deployments", "--config", scaledToml, "--limit", "1"])
                #expect(scaledHistory.output.contains("\(threeID)\tsucceeded") && scaledHistory.output.contains("\tscaling web to 3 replicas\t"), "\(scaledHistory.output)")
                // Each replica's lines say which replica printed them (its health probes at least).
                for _ in 0..<3 { _ = try await Self.curl(helloURL) }
                let threeLogs = try await cli.run(["logs", "--config", scaledToml, "-o", "json"])
                let printedBy = Set(threeLogs.output.split(separator: "\n").compactMap { JSONValue.parse(String($0)) }
                    .filter { $0["deployment_id"]?.int == threeID }.compactMap { $0["replica"]?.int })
                #expect(printedBy == [1, 2, 3], "\(threeLogs.output.suffix(1500))")
                #expect(try await cli.run(["logs", "--config", scaledToml]).output.contains("web.r3"))
                let again = try await cli.run(["scale", "count", "3", "--config", scaledToml])
                #expect(again.status == 0 && again.output.contains("nothing to roll out"), "\(again.output)")
                let againJSON = try await cli.json(["scale", "count", "3", "--config", scaledToml])
                #expect(againJSON.value["deployment"] == .null && againJSON.value.items.first?["replicas"]?.int == 3, "\(againJSON.value)")
                let redeployed = try await cli.run(["deploy", "--config", scaledToml])
                #expect(redeployed.status == 0 && redeployed.output.contains("(3 replicas)"), "a deploy keeps the scale: \(redeployed.output)")
                let reset = try await cli.run(["scale", "reset", "--config", scaledToml])
                #expect(reset.status == 0 && reset.output.contains("back to loco.toml's min_replicas") && reset.output.contains("(2 replicas)"), "\(reset.output)")
                #expect(try await cli.run(["status", "--config", scaledToml]).output.contains("(2 replicas, 256Mi memory)"))
                let zero = try await cli.run(["scale", "count", "0", "--config", scaledToml])
                #expect(zero.status == 2 && zero.output.contains("out of range") && zero.output.contains("from 1 to 100"), "\(zero.output)")
                #expect(try await Self.curl(helloURL).contains("Hello from Loco"))
            }
        }
    }


    @Test("a dropped event stream resumes without repeating an event; behind a buffering proxy the CLI polls instead")
    func streamResumeAndFallback() async throws {
        try await TestDatabase.with(migrations: []) { db in
            try await LocoStack.with(db: db) { stack in
                let home = stack.folder.appending(path: "home")
                let apiPort = try #require(stack.base.split(separator: ":").last.map(String.init))
                let script = Repo.root.appending(path: "Tests/LocoAPITests/Fixtures/flaky_proxy.py").path
                for mode in ["drop", "buffer"] {
                    let port = try freePort()
                    let state = stack.folder.appending(path: "proxy-\(mode).log")
                    let proxy = try ChildProcess(URL(fileURLWithPath: "/usr/bin/python3"), [script, "\(port)", apiPort, mode, state.path])
                    defer { proxy.stop() }
                    #expect(try await eventually(timeout: .seconds(10)) { (try? String(contentsOf: state, encoding: .utf8))?.contains("listening") == true })
                    let cli = CLI(binary: try Repo.binary("loco"), environment: ["XDG_CONFIG_HOME": home.path, "HOME": home.path,
                                                                                 "LOCO_API": "http://127.0.0.1:\(port)", "LOCO_TOKEN": stack.token])
                    let app = try stack.example("hello", as: "hello", edit: ["public/index.html": "<h1>\(mode)</h1>\n"])
                    let result = try await cli.run(["deploy", "--config", app.appending(path: "loco.toml").path, "-o", "ndjson", "--debug"])
                    #expect(result.status == 0, "\(mode): \(result.output)")
                    let lines = result.output.split(separator: "\n").compactMap { JSONValue.parse(String($0)) }
                    let log = (try? String(contentsOf: state, encoding: .utf8)) ?? ""
                    if mode == "drop" {
                        #expect(log.components(separatedBy: "dropped").count - 1 >= 1, "the proxy cut the stream: \(log)")
                        let ids = lines.compactMap { $0["id"]?.int }
                        #expect(!ids.isEmpty && ids == Array(ids.first!...ids.last!), "every event once, in order: \(ids)")
                        #expect(ids.first == 1)
                    } else {
                        #expect(log.contains("buffered"), "the proxy rewrote the stream: \(log)")
                        #expect(lines.contains { $0["type"]?.stringValue == "stage_finished" && $0["stage"]?.stringValue == "wait" }, "polling still shows the stages: \(result.output)")
                    }
                    #expect(lines.last?["deployment"]?["state"]?.stringValue == "succeeded", "\(mode): \(result.output.suffix(1500))")
                }
            }
        }
    }


    /// A real terminal: tmux runs a shell, the test types and reads the screen.
    struct Screen {
        let socket: String
        static let tmux = URL(fileURLWithPath: "/usr/bin/tmux")

        static func start(environment: [String: String], folder: URL) async throws -> Screen {
            guard FileManager.default.isExecutableFile(atPath: tmux.path) else { throw TestSetupError("tmux is missing: apt-get install -y tmux (scripts/test installs it)") }
            let screen = Screen(socket: "loco-test-\(UInt32.random(in: 0...UInt32.max))")
            let exports = environment.map { "export \($0.key)='\($0.value)'" }.joined(separator: "; ")
            let started = try await runCommand(tmux, ["-L", screen.socket, "new-session", "-d", "-s", "t", "-x", "200", "-y", "50",
                                                      "bash --norc --noprofile -c \"\(exports); cd '\(folder.path)'; PS1='$ ' exec bash --norc --noprofile\""])
            guard started.status == 0 else { throw TestSetupError("tmux did not start: \(started.output)") }
            return screen
        }

        func type(_ keys: String, enter: Bool = true) async throws {
            _ = try await runCommand(Self.tmux, ["-L", socket, "send-keys", "-t", "t", "-l", keys])
            if enter { _ = try await runCommand(Self.tmux, ["-L", socket, "send-keys", "-t", "t", "Enter"]) }
        }

        func key(_ name: String) async throws { _ = try await runCommand(Self.tmux, ["-L", socket, "send-keys", "-t", "t", name]) }

        func text() async throws -> String { try await runCommand(Self.tmux, ["-L", socket, "capture-pane", "-p", "-t", "t", "-S", "-200"]).output }

        /// Waits until the screen shows `needle`; returns the screen.
        @discardableResult
        func wait(for needle: String, timeout: Duration = .seconds(60)) async throws -> String {
            var last = ""
            let seen = try await eventually(timeout: timeout, every: .milliseconds(100)) {
                last = try await text()
                return last.contains(needle)
            }
            if !seen { throw TestSetupError("the screen never showed '\(needle)':\n\(last)") }
            return last
        }

        func stop() async {
            _ = try? await runCommand(Self.tmux, ["-L", socket, "kill-server"])
            // kill-server does not always end a server whose pane still runs a program.
            _ = try? await runCommand(URL(fileURLWithPath: "/usr/bin/pkill"), ["-9", "-f", "tmux -L \(socket) "])
        }
    }

    @Test("in a real terminal (tmux): init asks and writes, deploy shows live stages and Ctrl-C offers to cancel, logs --follow freezes without losing lines")
    func interactive() async throws {
        try await TestDatabase.with(migrations: []) { db in
            try await LocoStack.with(db: db) { stack in
                let home = stack.folder.appending(path: "home")
                let environment = ["XDG_CONFIG_HOME": home.path, "HOME": home.path, "LOCO_API": stack.base, "LOCO_TOKEN": stack.token, "TERM": "xterm-256color"]

                // init: detects the Dockerfile's port, asks, writes.
                let fresh = stack.folder.appending(path: "fresh-app")
                try FileManager.default.createDirectory(at: fresh, withIntermediateDirectories: true)
                try "FROM scratch\nEXPOSE 3000\n".write(to: fresh.appending(path: "Dockerfile"), atomically: true, encoding: .utf8)
                let screen = try await Screen.start(environment: environment, folder: fresh)
                do {
                    try await Self.interactiveScenes(screen: screen, stack: stack, environment: environment, fresh: fresh)
                } catch {
                    await screen.stop()
                    throw error
                }
                await screen.stop()
            }
        }
    }

    static func interactiveScenes(screen: Screen, stack: LocoStack, environment: [String: String], fresh: URL) async throws {
                let loco = try Repo.binary("loco").path
                try await screen.type("\(loco) init")
                try await screen.wait(for: "App name [fresh-app]:")
                try await screen.type("my-shop")
                try await screen.wait(for: "Port the app listens on [3000]:")
                try await screen.type("")
                try await screen.wait(for: "Health path")
                try await screen.type("/healthz")
                try await screen.wait(for: "Wrote")
                let written = try ConfigLoaderText.read(fresh.appending(path: "loco.toml"))
                #expect(written.contains("name = \"my-shop\"") && written.contains("port = 3000") && written.contains("health = \"/healthz\""), "\(written)")

                // deploy: a slow build shows its stage live; Ctrl-C asks; 'y' cancels; exit code 5.
                let slow = try stack.example("hello", as: "hello", edit: ["Dockerfile": "ARG BASE\nFROM ${BASE}\nRUN echo warming up && sleep 30\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\"]\n"])
                try await screen.type("clear; \(loco) deploy --config \(slow.appending(path: "loco.toml").path); echo EXIT=$?")
                let building = try await screen.wait(for: "warming up", timeout: .seconds(90))
                #expect(building.contains("build of web started") && building.contains("│"), "\(building)")
                try await screen.key("C-c")
                try await screen.wait(for: "Cancel deployment")
                try await screen.type("y")
                let cancelled = try await screen.wait(for: "EXIT=")
                #expect(cancelled.contains("Cancelled deployment") && cancelled.contains("EXIT=5"), "\(cancelled)")

                // logs --follow: space freezes the display; lines that arrive meanwhile show on unfreeze.
                let hello = try stack.example("hello", as: "hello")
                let cli = CLI(binary: try Repo.binary("loco"), environment: environment)
                let deployed = try await cli.json(["deploy", "--config", hello.appending(path: "loco.toml").path])
                let url = try #require(deployed.value["url"]?.stringValue, "\(deployed.value)")
                try await screen.type("clear; \(loco) logs --follow --config \(hello.appending(path: "loco.toml").path)")
                try await screen.wait(for: "space: freeze")
                _ = try await Self.curl(url + "/first")
                try await screen.wait(for: "/first")
                try await screen.type(" ", enter: false)
                try await screen.wait(for: "frozen: new lines are kept")
                _ = try await Self.curl(url + "/second")
                try await Task.sleep(for: .seconds(2))
                #expect(!(try await screen.text()).contains("/second"), "nothing new shows while frozen")
                try await screen.type(" ", enter: false)
                let thawed = try await screen.wait(for: "/second")
                #expect(thawed.contains("unfrozen: "), "\(thawed)")
                try await screen.key("C-c")
    }


    @Test("20 apps deployed at once with 2 build, 2 push and 4 apply/wait workers: all serve, each one's stage events complete and in order")
    func twentyAtOnce() async throws {
        try await TestDatabase.with(migrations: []) { db in
            try await LocoStack.with(db: db, workerQueues: ["build=2", "push=2", "apply=4", "wait=4", "cleanup=2"]) { stack in
                let home = stack.folder.appending(path: "home")
                let cli = CLI(binary: try Repo.binary("loco"), environment: ["XDG_CONFIG_HOME": home.path, "HOME": home.path,
                                                                             "LOCO_API": stack.base, "LOCO_TOKEN": stack.token])
                let names = (1...20).map { "app-\($0)" }
                let folders = try names.map { name in try stack.example("hello", as: name, edit: ["public/index.html": "<h1>\(name)</h1>\n"]) }
                let ids = try await withThrowingTaskGroup(of: (String, Int64?).self) { group in
                    for (name, folder) in zip(names, folders) {
                        group.addTask {
                            let result = try await cli.json(["deploy", "--config", folder.appending(path: "loco.toml").path, "--detach"])
                            return (name, result.value["id"]?.int)
                        }
                    }
                    var ids: [String: Int64] = [:]
                    for try await (name, id) in group { ids[name] = id }
                    return ids
                }
                #expect(ids.count == 20, "every deploy answered with an id")
                let finished = try await eventually(timeout: .seconds(600), every: .seconds(1)) {
                    try await db.scalar("SELECT count(*) FROM loco_deployments WHERE state IN ('succeeded','failed','cancelled')", as: Int64.self) == 20
                }
                #expect(finished, "\(stack.workers.output.suffix(3000))")
                for name in names {
                    let id = try #require(ids[name])
                    let shown = try await cli.json(["deployment", "show", "\(id)"])
                    #expect(shown.value["state"]?.stringValue == "succeeded", "\(name): \(shown.value["report"] ?? .null)")
                    if let url = shown.value["url"]?.stringValue { #expect(try await Self.curl(url).contains(name), "\(name) serves its own page") }
                    let buildLog = try await cli.run(["logs", "--deployment", "\(id)", "-o", "json"])
                    #expect(buildLog.output.contains("STEP 1/4"), "\(name) has its build output")
                    let events = try await stack.db.client.query("SELECT type, stage FROM loco_deployment_events WHERE deployment_id = \(id) AND type LIKE 'stage_%' ORDER BY id")
                    var sequence: [String] = []
                    for try await (type, stage) in events.decode((String, String?).self) { sequence.append("\(type == "stage_started" ? "+" : "-")\(stage ?? "")") }
                    // A stage retried after a transient failure (builds racing on shared storage) starts twice.
                    let main = sequence.filter { !$0.hasSuffix("cleanup") }.reduce(into: [String]()) { if $0.last != $1 { $0.append($1) } }
                    #expect(main == ["+build", "-build", "+push", "-push", "+apply", "-apply", "+wait", "-wait"], "\(name): \(sequence)")
                }
            }
        }
    }

}

extension JSONValue {
    var items: [JSONValue] {
        if case .array(let list)? = self["items"] { return list }
        if case .array(let list) = self { return list }
        return []
    }
    var int: Int64? { if case .number(let number) = self { return Int64(number) }; return nil }
}

enum ConfigLoaderText {
    static func read(_ url: URL) throws -> String { try String(contentsOf: url, encoding: .utf8) }
}
