import Foundation
import HTTPTypes
import HummingbirdTesting
import LocoAPI
import LocoConfig
import LocoCore
import LocoQueue
import Logging
import LocoTestSupport
import NIOCore
import PostgresNIO
import Synchronization
import Testing

/// Stage handlers that do no real work but move the deployment exactly as the real workers will:
/// `stageStarted` in one transaction, then the stage's result and the job's completion in another.
func scriptedStages(_ store: CoreStore, _ database: ConnectionPool, failing: Stage? = nil, blocking: Stage? = nil) -> JobHandlers {
    var handlers = JobHandlers()
    for stage in Stage.allCases {
        handlers.register(kind: stage.jobKind) { argsText, context in
            let args = try JSONDecoder().decode(DeploymentJobArgs.self, from: Data(argsText.utf8))
            let proceed = try await database.transaction { connection in
                try await store.stageStarted(deploymentID: args.deploymentID, stage: stage, service: args.service, on: connection)
            }
            guard proceed else { return }
            if stage == blocking { try await Task.sleep(for: .seconds(60)) }
            if stage == failing { throw JobFailure.permanent("BUILD_FAILED", "step 2/3 RUN make: exit code 2") }
            let result = stage == .push ? StageResult(imageDigest: "sha256:" + String(repeating: "ab", count: 32), imageRef: "registry/acme/web:x-\(args.deploymentID)") : StageResult()
            _ = try await database.transaction { connection in
                let released = try await store.stageFinished(deploymentID: args.deploymentID, stage: stage, service: args.service, result: result, on: connection)
                try await context.complete(in: connection)
                return released
            }
        }
    }
    return handlers
}

let pipelineQueues: [(String, Int)] = Stage.allCases.map { ($0.queue, 2) }

@Suite("Deployment pipeline")
struct DeploymentPipelineTests {
    @Test("a deployment and its whole job DAG are created in one transaction")
    func dagInOneTransaction() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("shop", in: team, owner: ann)
            let config: JSONValue = .object(["services": .array([.object(["name": .string("api")]), .object(["name": .string("web")])])])
            let deployment = try await harness.store.submit(DeploymentRequest(app: app, config: config, context: nil,
                                                                              createdBy: ann.id, queueBehind: false), on: harness.database.client)
            let rows = try await harness.database.client.query("""
                SELECT dj.stage || coalesce(':' || dj.service, ''), j.state, j.queue,
                       coalesce((SELECT string_agg(pj.stage || coalesce(':' || pj.service, ''), ',' ORDER BY pj.stage, pj.service)
                                 FROM loco_job_dependencies d JOIN loco_deployment_jobs pj ON pj.job_id = d.depends_on WHERE d.job_id = j.id), '')
                FROM loco_deployment_jobs dj JOIN loco_jobs j ON j.id = dj.job_id
                WHERE dj.deployment_id = \(deployment.id) ORDER BY 1
                """)
            var plan: [String: (String, String, String)] = [:]
            for try await (name, state, queue, parents) in rows.decode((String, String, String, String).self) { plan[name] = (state, queue, parents) }
            #expect(plan["build:api"]! == ("available", "build", ""))
            #expect(plan["build:web"]! == ("available", "build", ""))
            #expect(plan["push:api"]! == ("blocked", "push", "build:api"))
            #expect(plan["push:web"]! == ("blocked", "push", "build:web"))
            #expect(plan["apply"]! == ("blocked", "apply", "push:api,push:web"))
            #expect(plan["wait"]! == ("blocked", "wait", "apply"))
            #expect(plan["cleanup"]! == ("blocked", "cleanup", "wait"))
            #expect(plan.count == 7)

            // App types without a Dockerfile skip build and push.
            let cache = try await harness.app("cache", in: team, owner: ann, type: .redis)
            let redis = try await harness.store.submit(DeploymentRequest(app: cache, config: .object([:]), context: nil,
                                                                         createdBy: ann.id, queueBehind: false), on: harness.database.client)
            let stages = try await harness.database.scalar("SELECT string_agg(stage, ',' ORDER BY job_id) FROM loco_deployment_jobs WHERE deployment_id = \(redis.id)", as: String.self)
            #expect(stages == "apply,wait,cleanup")

            // A failure half-way through the DAG leaves nothing: no deployment, no event, no job.
            _ = try await harness.database.client.query("""
                CREATE FUNCTION refuse_wait() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.kind = 'deploy.wait' THEN RAISE EXCEPTION 'refused for the test'; END IF; RETURN NEW; END $$
                """).collect()
            _ = try await harness.database.client.query("CREATE TRIGGER refuse_wait BEFORE INSERT ON loco_jobs FOR EACH ROW EXECUTE FUNCTION refuse_wait()").collect()
            let other = try await harness.app("other", in: team, owner: ann)
            let before = try await harness.database.scalar("SELECT (SELECT count(*) FROM loco_jobs) + (SELECT count(*) FROM loco_deployments) + (SELECT count(*) FROM loco_deployment_events)", as: Int64.self)
            await #expect(throws: (any Error).self) {
                _ = try await harness.store.submit(DeploymentRequest(app: other, config: .object([:]), context: nil,
                                                                     createdBy: ann.id, queueBehind: false), on: harness.database.client)
            }
            let after = try await harness.database.scalar("SELECT (SELECT count(*) FROM loco_jobs) + (SELECT count(*) FROM loco_deployments) + (SELECT count(*) FROM loco_deployment_events)", as: Int64.self)
            #expect(before == after)
        }
    }

    @Test("the deployment's state follows its jobs through every stage to succeeded")
    func stateFollowsJobs() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let deployment = try await harness.deployment(of: app)
            let db = harness.database
            try await db.withWorker(fastConfiguration(pipelineQueues), handlers: scriptedStages(harness.store, db.client)) { _ in
                let done = try await eventually(timeout: .seconds(60)) {
                    try await harness.store.deployment(id: deployment.id, on: db.client)?.state == .succeeded
                }
                #expect(done)
                // Cleanup runs after success.
                let reached1 = try await eventually { try await db.scalar("SELECT count(*) FROM loco_deployment_jobs dj JOIN loco_jobs j ON j.id = dj.job_id WHERE dj.deployment_id = \(deployment.id) AND j.state <> 'completed'", as: Int64.self) == 0 }
                #expect(reached1)
            }
            let final = try #require(try await harness.store.deployment(id: deployment.id, on: db.client))
            // The build context goes once the deployment has ended, whichever process ended it.
            let digest = try #require(final.contextDigest)
            let contextFile = try #require(harness.api.contexts.path(digest: digest))
            #expect(FileManager.default.fileExists(atPath: contextFile.path))
            try await harness.api.reconcile()
            #expect(!FileManager.default.fileExists(atPath: contextFile.path))
            #expect(final.imageDigest == "sha256:" + String(repeating: "ab", count: 32))
            #expect(final.finishedAt != nil)
            for stage in ["build", "push", "apply", "wait"] {
                let timing = try #require(final.stages[stage], "no timing for \(stage)")
                #expect(timing.startedAt != nil && timing.finishedAt != nil && timing.startedAt! <= timing.finishedAt!)
            }
            let events = try await harness.store.events(deploymentID: deployment.id, after: 0, on: db.client)
            #expect(events.map(\.id) == Array(1...Int64(events.count)), "ids are 1, 2, 3, … per deployment")
            #expect(events.first?.type == "queued")
            // Right after wait finishes, the deployment succeeds (cleanup's own events follow).
            let waitDone = try #require(events.firstIndex { $0.type == "stage_finished" && $0.stage == "wait" })
            #expect(events[waitDone + 1].type == "succeeded")
            let stagesSeen = events.filter { $0.type == "stage_started" }.compactMap(\.stage)
            #expect(stagesSeen.prefix(4) == ["build", "push", "apply", "wait"])
        }
    }

    @Test("a redeploy (rollback) runs a deployment's pushed images again: apply, wait and cleanup only, also after waiting in line; one with no image is refused")
    func redeploy() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let db = harness.database
            func plan(_ id: Int64) async throws -> String {
                try await db.scalar("SELECT string_agg(stage, ',' ORDER BY job_id) FROM loco_deployment_jobs WHERE deployment_id = \(id)", as: String.self)
            }
            let first = try await harness.deployment(of: app)
            try await db.withWorker(fastConfiguration(pipelineQueues), handlers: scriptedStages(harness.store, db.client)) { _ in
                let done = try await eventually(timeout: .seconds(60)) { try await harness.store.deployment(id: first.id, on: db.client)?.state == .succeeded }
                #expect(done)
            }
            let built = try #require(try await harness.store.deployment(id: first.id, on: db.client))
            #expect(built.imageRef != nil && built.whyNotRedeployable(type: app.type) == nil)

            // Two redeploys of it: one at once, one in line behind it (its DAG made when the first ends).
            let again = try await harness.store.submit(try DeploymentRequest.redeploy(of: built, app: app, createdBy: ann.id, queueBehind: false), on: db.client)
            let inLine = try await harness.store.submit(try DeploymentRequest.redeploy(of: built, app: app, createdBy: ann.id, queueBehind: true), on: db.client)
            #expect(again.redeployOf == first.id && again.imageRef == built.imageRef && again.imageDigest == built.imageDigest
                    && again.images == built.images && again.contextDigest == nil && again.config == built.config)
            #expect(try await plan(again.id) == "apply,wait,cleanup")
            #expect(inLine.state == .queued && inLine.queuedBehind == again.id)
            let queuedEvent = try await harness.store.events(deploymentID: again.id, after: 0, on: db.client).first
            #expect(queuedEvent?.message.contains("deployment \(first.id)'s images again, no build") == true, "\(String(describing: queuedEvent))")
            try await db.withWorker(fastConfiguration(pipelineQueues), handlers: scriptedStages(harness.store, db.client)) { _ in
                let done = try await eventually(timeout: .seconds(60)) {
                    try await harness.store.deployment(id: inLine.id, on: db.client)?.state == .succeeded
                }
                #expect(done)
            }
            #expect(try await plan(inLine.id) == "apply,wait,cleanup", "released from the line without build and push")
            let rolledBack = try #require(try await harness.store.deployment(id: inLine.id, on: db.client))
            #expect(rolledBack.imageDigest == built.imageDigest && rolledBack.stages["build"] == nil && rolledBack.stages["apply"] != nil)
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 1, on: db.client).isEmpty, "the image the redeploys served is kept")

            // Cancelled before its push: nothing to run again.
            let cancelled = try await harness.store.cancel(deploymentID: try await harness.deployment(of: app).id, on: db.client).0
            #expect(throws: CoreError.notRedeployable(deploymentID: cancelled.id, reason: "it has no pushed image for web (it is cancelled and never got that far)")) {
                _ = try DeploymentRequest.redeploy(of: cancelled, app: app, createdBy: ann.id, queueBehind: false)
            }
            // An app that is not built has no images to need.
            let cache = try await harness.app("cache", in: team, owner: ann, type: .redis)
            let redis = try await harness.store.submit(DeploymentRequest(app: cache, config: .object([:]), context: nil, createdBy: ann.id, queueBehind: false), on: db.client)
            #expect(redis.whyNotRedeployable(type: .redis) == nil)
        }
    }

    @Test("cleanup keeps the images of the last versions that served and those a waiting deployment needs; failed deployments' images go")
    func imagesToPrune() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let db = harness.database
            // Oldest first: A served, B served, C failed, D served (serving now), A again waiting in line (a rollback).
            for (state, digest, inLine) in [("succeeded", "sha256:a", false), ("succeeded", "sha256:b", false), ("failed", "sha256:c", false),
                                            ("succeeded", "sha256:d", false), ("queued", "sha256:a", true)] {
                _ = try await db.client.query("""
                    INSERT INTO loco_deployments (app_id, state, in_line, config, image_digest) VALUES (\(app.id), \(state), \(inLine), '{}'::jsonb, \(digest))
                    """).collect()
            }
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 2, on: db.client) == ["sha256:c"])
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 1, on: db.client) == ["sha256:b", "sha256:c"])
            _ = try await db.client.query("UPDATE loco_deployments SET state = 'cancelled' WHERE app_id = \(app.id) AND state = 'queued'").collect()
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 2, on: db.client) == ["sha256:a", "sha256:c"])
            // What cleanup deleted is recorded and not offered again.
            try await harness.store.markPruned(appID: app.id, digests: ["sha256:c"], on: db.client)
            try await harness.store.markPruned(appID: app.id, digests: ["sha256:c"], on: db.client)
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 2, on: db.client) == ["sha256:a"])
            #expect(try await harness.store.prunedImages(appID: app.id, among: ["sha256:a", "sha256:c"], on: db.client) == ["sha256:c"])
            // The same content built and pushed again: the image is back, and so is its record's absence.
            let pushing = try await db.scalar("""
                INSERT INTO loco_deployments (app_id, state, config) VALUES (\(app.id), 'pushing', '{}'::jsonb) RETURNING id
                """, as: Int64.self)
            _ = try await db.client.transaction { connection in
                try await harness.store.stageFinished(deploymentID: pushing, stage: .push, service: "web",
                                                      result: StageResult(imageDigest: "sha256:c", imageRef: "localhost:5000/acme/web@sha256:c"), on: connection)
            }
            #expect(try await harness.store.prunedImages(appID: app.id, among: ["sha256:c"], on: db.client).isEmpty)
        }
    }

    @Test("loco scale: counts per service over loco.toml's, written only with the deployment that rolls them out, fixed per deployment at apply")
    func scaleCounts() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("shop", in: team, owner: ann)
            let store = harness.store, db = harness.database.client
            try await store.applyScale(.set(service: "api", replicas: 3), appID: app.id, on: db)
            #expect(try await store.scale(appID: app.id, on: db) == ["api": 3])
            await #expect(throws: CoreError.self) { try await store.applyScale(.set(service: "api", replicas: 0), appID: app.id, on: db) }

            // A deployment refused (another is in flight) writes no scale change.
            let first = try await store.submit(DeploymentRequest(app: app, config: .object([:]), context: nil, createdBy: nil, queueBehind: false), on: db)
            var second = DeploymentRequest(app: app, config: .object([:]), context: nil, createdBy: nil, queueBehind: false)
            second.scaleChange = .set(service: "web", replicas: 2)
            await #expect(throws: CoreError.self) { try await store.submit(second, on: db) }
            #expect(try await store.scale(appID: app.id, on: db) == ["api": 3], "the refused deployment's change is not written")
            second.queueBehind = true
            let queued = try await store.submit(second, on: db)
            #expect(try await store.scale(appID: app.id, on: db) == ["api": 3, "web": 2])
            let events = try await store.events(deploymentID: queued.id, after: 0, on: db)
            #expect(events.contains { $0.message.contains("scaling web to 2 replicas") }, "\(events.map(\.message))")

            // The first apply fixes a deployment's counts; a later change does not move them.
            #expect(try await store.fixReplicas(deploymentID: first.id, ["web": 2], on: db) == ["web": 2])
            #expect(try await store.fixReplicas(deploymentID: first.id, ["web": 5], on: db) == ["web": 2])
            #expect(try await store.deployment(id: first.id, on: db)?.replicas == ["web": 2])
            // A redeploy's reason goes into the history; one with a control character is refused.
            let token = try await harness.token(for: ann)
            for reason in ["%01bell", String(repeating: "a", count: 121)] {
                let refused = try await harness.call(.post, "/v1/deployments/\(first.id)/redeploy?reason=\(reason)", token: token)
                #expect(refused.status == 422 && refused.errorCode == "invalid_field", "\(refused.text)")
            }

            // What `GET /v1/apps/{app}/scale` lists: the serving config's services, counts set on top.
            let config = try ConfigLoader.parse(toml: """
                version = 1
                name = "shop"
                [[services]]
                name = "api"
                path = "/api"
                [[services]]
                name = "web"
                [services.resources]
                min_replicas = 2
                """).json
            let items = ServiceScale.list(config: config, app: "shop", scaled: ["api": 3, "old": 4], running: ["api": 3])
            #expect(items.map { "\($0.service) \($0.replicas) \($0.source) \($0.minReplicas ?? 0) \($0.running ?? 0)" }
                    == ["api 3 loco scale 1 3", "web 2 loco.toml 2 2", "old 4 loco scale 0 0"])
            #expect(try await store.applyScale(.reset(service: "api"), appID: app.id, on: db) == ["api"])
            #expect(try await store.applyScale(.reset(service: nil), appID: app.id, on: db) == ["web"])
            #expect(try await store.scale(appID: app.id, on: db).isEmpty)
        }
    }

    @Test("with several services, cleanup and the registry lifecycle keep every service's image of the versions they keep: an unchanged service's image stays")
    func multiServiceImages() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("shop", in: team, owner: ann)
            let db = harness.database
            // Three versions, 400, 300 and 200 days old; the api service never changed. `image_digest`
            // is the service pushed last: api's in the first, web's after.
            let web = ["sha256:e1", "sha256:e2", "sha256:e3"], api = "sha256:a0"
            for (index, days) in [400, 300, 200].enumerated() {
                let images = "{\"web\": \"localhost:5000/acme/shop@\(web[index])\", \"api\": \"localhost:5000/acme/shop@\(api)\"}"
                _ = try await db.client.query("""
                    INSERT INTO loco_deployments (app_id, state, config, image_digest, images, created_at, finished_at)
                    VALUES (\(app.id), 'succeeded', '{}'::jsonb, \(index == 0 ? api : web[index]), \(images)::jsonb,
                            now() - make_interval(days => \(days)::int), now() - make_interval(days => \(days)::int))
                    """).collect()
            }
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 2, on: db.client) == ["sha256:e1"])
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 1, on: db.client) == ["sha256:e1", "sha256:e2"])
            let expired = try await harness.store.expiredImages(olderThan: .seconds(180 * 86400), keep: 2, on: db.client)
            #expect(expired.map { "\($0.repository)@\($0.digest)" } == ["acme/shop@sha256:e1"] && expired.allSatisfy { $0.appID == app.id })
            try await harness.store.markPruned(appID: app.id, digests: ["sha256:e1"], on: db.client)
            #expect(try await harness.store.expiredImages(olderThan: .seconds(180 * 86400), keep: 2, on: db.client).isEmpty, "recorded as deleted")
            #expect(try await harness.store.imagesToPrune(appID: app.id, keep: 2, on: db.client).isEmpty)
            // Deleting the app deletes every service's images.
            #expect(try await harness.store.pushedImages(appID: app.id, on: db.client) == ["sha256:a0", "sha256:e3", "sha256:e2", "sha256:e1"])
        }
    }

    @Test("a deployment waiting on a paused queue is told why, once per pause, and goes on when the queue resumes")
    func pausedQueue() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let db = harness.database
            _ = try await db.store.pause(queue: "build", by: "ann: registry down", on: db.client)
            let deployment = try await harness.deployment(of: app)
            try await harness.api.reconcile()
            try await harness.api.reconcile()
            let told = try await harness.store.events(deploymentID: deployment.id, after: 0, on: db.client).filter { $0.type == "queue_paused" }
            #expect(told.count == 1, "once per pause, however often reconcile runs: \(told)")
            #expect(told.first?.stage == "build")
            #expect(told.first?.message.contains("the operator paused the build queue") == true && told.first?.message.contains("ann: registry down") == true,
                    "\(told.first?.message ?? "")")

            try await db.withWorker(fastConfiguration(pipelineQueues), handlers: scriptedStages(harness.store, db.client)) { _ in
                try await Task.sleep(for: .milliseconds(500))
                #expect(try await harness.store.deployment(id: deployment.id, on: db.client)?.state == .queued, "nothing builds while paused")
                #expect(try await db.store.resume(queue: "build", on: db.client))
                let done = try await eventually(timeout: .seconds(60)) {
                    try await harness.store.deployment(id: deployment.id, on: db.client)?.state == .succeeded
                }
                #expect(done)
            }
            // A new pause is a new story; with nothing waiting in the queue there is no one to tell.
            _ = try await db.store.pause(queue: "build", by: nil, on: db.client)
            try await harness.api.reconcile()
            let after = try await harness.store.events(deploymentID: deployment.id, after: 0, on: db.client).filter { $0.type == "queue_paused" }
            #expect(after.count == 1)
        }
    }

    @Test("a stage that runs past the workers' job timeout on every attempt fails the deployment with JOB_TIMEOUT")
    func jobTimeout() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let db = harness.database
            let deployment = try await harness.deployment(of: app)
            var configuration = fastConfiguration(pipelineQueues)
            configuration.jobTimeout = .milliseconds(300)
            let log = CapturedLog(level: .debug)
            try await db.withWorker(configuration, handlers: scriptedStages(harness.store, db.client, blocking: .build),
                                    logger: Logger(label: "loco.test.worker") { _ in log }) { worker in
                // Five attempts of 300 ms take about two seconds; a loaded CI run once took more than 20.
                let reached = try await eventually(timeout: .seconds(60)) { try await db.state(ofDeploymentJob: deployment.id, stage: "build") == "failed" }
                if !reached {
                    // A part stuck past its deadlines is named within its step's bound and 5 s.
                    _ = await eventually(timeout: .seconds(45)) { log.messages.contains { $0.hasPrefix("worker part ") } }
                    let jobs = await db.snapshot(jobsWhere: "id IN (SELECT job_id FROM loco_deployment_jobs WHERE deployment_id = \(deployment.id))")
                    Issue.record("""
                        the build job did not fail within 60 s. Stalled parts: \(worker.stalledParts)
                        \(jobs)
                        the worker's log:
                        \(log.timeline.suffix(200).joined(separator: "\n"))
                        """)
                }
            }
            try await harness.api.reconcile()
            let failed = try #require(try await harness.store.deployment(id: deployment.id, on: db.client))
            #expect(failed.state == .failed)
            let report = try #require(failed.report)
            #expect(report.stage == "build" && report.code == "JOB_TIMEOUT", "\(report)")
            #expect(report.message == "the build stage ran past the workers' job timeout on its last attempt (the job ran past its timeout of 300 ms and was stopped)")
            #expect(report.hint.contains("locod worker --job-timeout-seconds"))
            #expect(report.attempts.count == DeploymentPlan.maxAttempts(.build))
            #expect(try await db.state(ofDeploymentJob: deployment.id, stage: "push") == "cancelled")
        }
    }

    @Test("a stage job pruned before any reconciler saw it fails its deployment with JOB_GONE; one that failed over a week ago, with its own history")
    func stageJobGone() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let web = try await harness.app("web", in: team, owner: ann)
            let api = try await harness.app("api", in: team, owner: ann)
            let old = try await harness.app("old", in: team, owner: ann)
            let db = harness.database
            func jobID(_ deployment: Deployment, _ stage: Stage) async throws -> Int64 {
                try await db.scalar("SELECT job_id FROM loco_deployment_jobs WHERE deployment_id = \(deployment.id) AND stage = \(stage.rawValue)", as: Int64.self)
            }
            // web: an operator cancels its build job (the dependents go with it), and the cancelled
            // jobs are pruned while no 'locod api' runs.
            let lost = try await harness.deployment(of: web)
            #expect(try await db.store.cancel(id: try await jobID(lost, .build), on: db.client) == .cancelled)
            _ = try await db.client.query("DELETE FROM loco_jobs WHERE state = 'cancelled'")
            // api: its build completed and was pruned, while push waits in a paused queue: not stuck.
            let waiting = try await harness.deployment(of: api)
            let (waitingBuild, waitingPush) = (try await jobID(waiting, .build), try await jobID(waiting, .push))
            _ = try await db.client.query("UPDATE loco_jobs SET state = 'available' WHERE id = \(waitingPush)")
            _ = try await db.client.query("DELETE FROM loco_jobs WHERE id = \(waitingBuild)")

            // old: its build failed eight days ago (kept: failed jobs may be kept longer than a
            // week), past the window of the reconciler's first query.
            let stale = try await harness.deployment(of: old)
            let staleBuild = try await jobID(stale, .build)
            _ = try await db.client.query("""
                UPDATE loco_jobs SET state = 'failed', attempt = 1, finalized_at = now() - interval '8 days',
                       errors = '[{"attempt":1,"at":"2026-11-24T10:00:00Z","worker":"w","class":"permanent","code":"BUILD_FAILED","message":"step 2/3 RUN make: exit code 2"}]'
                WHERE id = \(staleBuild)
                """)
            _ = try await db.client.query("""
                UPDATE loco_jobs SET state = 'cancelled', finalized_at = now() - interval '8 days'
                WHERE state IN ('blocked','cancelled') AND id IN (SELECT job_id FROM loco_deployment_jobs WHERE deployment_id = \(stale.id))
                """)

            // Younger than an hour, a deployment is left alone.
            try await harness.api.reconcile()
            #expect(try await harness.store.deployment(id: lost.id, on: db.client)?.state == .queued)
            _ = try await db.client.query("UPDATE loco_deployments SET created_at = now() - interval '2 hours'")
            try await harness.api.reconcile()

            let failed = try #require(try await harness.store.deployment(id: lost.id, on: db.client))
            #expect(failed.state == .failed)
            let report = try #require(failed.report)
            #expect(report.stage == "build" && report.code == "JOB_GONE", "\(report)")
            #expect(report.hint.contains("locod api"))
            #expect(try await db.state(ofDeploymentJob: lost.id, stage: "cleanup") == "available", "the failure's cleanup is queued")
            #expect(try await harness.store.deployment(id: waiting.id, on: db.client)?.state == .queued, "a deployment with a job left to run is not stuck")
            let staleReport = try #require(try await harness.store.deployment(id: stale.id, on: db.client)?.report)
            #expect(staleReport.stage == "build" && staleReport.code == "BUILD_FAILED" && staleReport.message == "step 2/3 RUN make: exit code 2", "\(staleReport)")
            #expect(staleReport.attempts.count == 1)
            // The app is free again.
            let next = try await harness.deployment(of: web)
            #expect(next.state == .queued)
        }
    }

    @Test("a failed stage fails the deployment with a report, cleans up, and starts the next in line")
    func failureAndQueue() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let db = harness.database
            let first = try await harness.deployment(of: app)
            let second = try await harness.deployment(of: app, queueBehind: true)
            #expect(second.queuedBehind == first.id && second.state == .queued)
            // The failing worker runs first; the second deployment gets a healthy one.
            try await db.withWorker(fastConfiguration(pipelineQueues), handlers: scriptedStages(harness.store, db.client, failing: .build)) { _ in
                let reached = try await eventually { try await db.state(ofDeploymentJob: first.id, stage: "build") == "failed" }
                #expect(reached)
            }
            // The handler threw without recording a result; the reconciler turns the job's error into the report.
            try await harness.api.reconcile()
            let failed = try #require(try await harness.store.deployment(id: first.id, on: db.client))
            #expect(failed.state == .failed)
            let report = try #require(failed.report)
            #expect(report.stage == "build" && report.code == "BUILD_FAILED")
            #expect(report.message.contains("exit code 2"))
            #expect(report.attempts.count == 1)
            #expect(!report.hint.isEmpty)
            // The rest of its DAG is cancelled, and a cleanup for the failure is queued.
            #expect(try await db.state(ofDeploymentJob: first.id, stage: "push") == "cancelled")
            let cleanupKey = "deployment:\(first.id):cleanup:failed"
            #expect(try await db.scalar("SELECT count(*) FROM loco_jobs WHERE unique_key = \(cleanupKey)", as: Int64.self) == 1)
            try await db.withWorker(fastConfiguration(pipelineQueues), handlers: scriptedStages(harness.store, db.client)) { _ in
                let reached3 = try await eventually(timeout: .seconds(60)) { try await harness.store.deployment(id: second.id, on: db.client)?.state == .succeeded }
                #expect(reached3)
            }
            let events = try await harness.store.events(deploymentID: second.id, after: 0, on: db.client)
            #expect(events.map(\.type).prefix(2) == ["queued", "released"])
            // The failed deployment's context is no longer needed by anyone in flight.
            let status = try await harness.store.status(app: app, on: db.client)
            #expect(status.current?.id == second.id && status.lastFailure == nil && status.inFlight == nil)
            // The API's one-query status document says the same as the store's model.
            let reply = try await harness.call(.get, "/v1/apps/web/status", token: try await harness.token(for: ann))
            #expect(try CoreJSON.decoder.decode(AppStatus.self, from: Data(reply.text.utf8)) == status)
            let third = try await harness.deployment(of: app)
            // An app that prints a NUL byte before it crashes: PostgreSQL's text and jsonb cannot
            // hold one, so the build output line and the report's log tail were unwritable (the
            // deployment could not end); they are stored with U+FFFD in its place.
            _ = try await db.client.transaction { connection in
                try await harness.store.appendEvents(deploymentID: third.id, type: "build_output", stage: "build", messages: ["ok", "bin\u{0}ary"], on: connection)
                try await harness.store.fail(deploymentID: third.id, report: FailureReport(stage: "apply", code: "CRASH_LOOP", message: "exit 1", hint: "check CMD",
                                                                                           evidence: ["log_tail": .string("panic\u{0}: \\u0000 stays")]), on: connection)
            }
            let afterFailure = try await harness.store.status(app: app, on: db.client)
            #expect(afterFailure.lastFailure?.id == third.id && afterFailure.lastFailure?.report?.code == "CRASH_LOOP")
            #expect(afterFailure.lastFailure?.report?.evidence["log_tail"]?.stringValue == "panic\u{FFFD}: \\u0000 stays")
            let thirdEvents = try await harness.store.events(deploymentID: third.id, after: 0, on: db.client)
            #expect(thirdEvents.contains { $0.message == "bin\u{FFFD}ary" }, "\(thirdEvents.map(\.message))")
            let replyAfter = try await harness.call(.get, "/v1/apps/web/status", token: try await harness.token(for: ann))
            #expect(try CoreJSON.decoder.decode(AppStatus.self, from: Data(replyAfter.text.utf8)) == afterFailure)
        }
    }

    @Test("cancelling a running deployment stops its jobs and frees the app")
    func cancelRunning() async throws {
        try await Harness.with { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            let app = try await harness.app("web", in: team, owner: ann)
            let token = try await harness.token(for: ann)
            let db = harness.database
            let deployment = try await harness.deployment(of: app)
            try await db.withWorker(fastConfiguration(pipelineQueues), handlers: scriptedStages(harness.store, db.client, blocking: .build)) { _ in
                let reached4 = try await eventually { try await harness.store.deployment(id: deployment.id, on: db.client)?.state == .building }
                #expect(reached4)
                let reply = try await harness.call(.post, "/v1/deployments/\(deployment.id)/cancel", token: token)
                #expect(reply.status == 200 && reply.json?["state"]?.stringValue == "cancelled", "\(reply.text)")
                // The running build's handler is cancelled at its next heartbeat.
                let reached5 = try await eventually(timeout: .seconds(60)) { try await db.state(ofDeploymentJob: deployment.id, stage: "build") == "cancelled" }
                #expect(reached5)
                let again = try await harness.call(.post, "/v1/deployments/\(deployment.id)/cancel", token: token)
                #expect(again.status == 409 && again.errorCode == "deployment_finished")
                let (headers, body) = Harness.deployBody(context: try await TarGz.sample())
                let next = try await harness.call(.post, "/v1/apps/web/deployments", token: token, headers: headers, body: body)
                #expect(next.status == 201, "the app is free again: \(next.text)")
            }
        }
    }

    @Test("concurrent submits for one app: exactly one wins, the rest hear which one")
    func concurrentSubmits() async throws {
        try await Harness.with(.live) { harness in
            let ann = try await harness.user("ann@example.com")
            let team = try await harness.team("acme", owner: ann)
            _ = try await harness.app("web", in: team, owner: ann)
            let token = try await harness.token(for: ann)
            let (headers, body) = Harness.deployBody(context: try await TarGz.sample())
            let port = try #require(harness.client.port)
            let replies = try await withThrowingTaskGroup(of: Reply.self) { group in
                for _ in 0..<16 {
                    group.addTask { try await liveCall(port: port, .post, "/v1/apps/web/deployments", token: token, headers: headers, body: body) }
                }
                return try await group.reduce(into: [Reply]()) { $0.append($1) }
            }
            let created = replies.filter { $0.status == 201 }
            #expect(created.count == 1, "\(replies.map(\.status))")
            let winner = try #require(created.first?.json?["id"])
            for loser in replies where loser.status != 201 {
                #expect(loser.status == 409 && loser.errorCode == "deployment_in_progress")
                #expect(loser.json?["error"]?["message"]?.stringValue?.contains("deployment \(winner.jsonText)") == true, "\(loser.text)")
            }
            #expect(try await harness.database.scalar("SELECT count(*) FROM loco_deployments", as: Int64.self) == 1)
        }
    }
}

extension TestDatabase {
    public func state(ofDeploymentJob deploymentID: Int64, stage: String) async throws -> String? {
        for try await state in try await client.query("""
            SELECT j.state FROM loco_deployment_jobs dj JOIN loco_jobs j ON j.id = dj.job_id
            WHERE dj.deployment_id = \(deploymentID) AND dj.stage = \(stage) ORDER BY j.id LIMIT 1
            """).decode(String.self) {
            return state
        }
        return nil
    }
}
