import Foundation
import LocoShared
import LocoQueue
import PostgresNIO

/// What a stage produced, recorded on the deployment when the stage finishes.
public struct StageResult: Sendable {
    public var imageDigest: String?
    public var imageRef: String?
    public var message: String?
    /// Where the version answers (the wait stage records it).
    public var url: String?

    public init(imageDigest: String? = nil, imageRef: String? = nil, message: String? = nil, url: String? = nil) {
        self.imageDigest = imageDigest
        self.imageRef = imageRef
        self.message = message
        self.url = url
    }
}

/// How stage handlers move a deployment along. Each call runs on the handler's own transaction,
/// so with `JobContext.complete(in:)` the stage's result and its job's completion commit together.
extension CoreStore {
    /// Marks a stage as started. Returns `false` when the deployment has ended (cancelled, or failed
    /// elsewhere) or is gone: the handler should stop without doing the work.
    public func stageStarted(deploymentID: Int64, stage: Stage, service: String? = nil, on connection: PostgresConnection) async throws -> Bool {
        guard let state = try await lockedState(deploymentID, on: connection), !state.isFinal || stage == .cleanup else { return false }
        let newState = stage.runningState?.rawValue
        let first = try await scalar("""
            UPDATE loco_deployments SET
                state = coalesce(\(newState)::text, state),
                stages = CASE WHEN stages ? \(stage.rawValue) THEN stages
                              ELSE stages || jsonb_build_object(\(stage.rawValue), jsonb_build_object('started_at', loco_rfc3339(now()))) END
            WHERE id = \(deploymentID)
            RETURNING true
            """, as: Bool.self, on: connection)
        guard first == true else { return false }
        let what = service.map { "\(stage.rawValue) of \($0)" } ?? stage.rawValue
        try await appendEvent(deploymentID: deploymentID, type: "stage_started", stage: stage.rawValue, message: "\(what) started", on: connection)
        return true
    }

    /// Records a finished stage. Finishing `wait` means the new version serves: the deployment succeeds.
    public func stageFinished(deploymentID: Int64, stage: Stage, service: String? = nil, result: StageResult = StageResult(),
                              on connection: PostgresConnection) async throws -> [String] {
        guard let state = try await lockedState(deploymentID, on: connection), !state.isFinal || stage == .cleanup else { return [] }
        try await execute("""
            UPDATE loco_deployments SET
                image_digest = coalesce(\(result.imageDigest), image_digest),
                image_ref = coalesce(\(result.imageRef), image_ref),
                images = CASE WHEN \(service)::text IS NULL OR \(result.imageRef)::text IS NULL THEN images
                              ELSE images || jsonb_build_object(\(service)::text, \(result.imageRef)::text) END,
                url = coalesce(\(result.url), url),
                stages = jsonb_set(stages, ARRAY[\(stage.rawValue)::text],
                                   coalesce(stages -> \(stage.rawValue), '{}'::jsonb) || jsonb_build_object('finished_at', loco_rfc3339(now())))
            WHERE id = \(deploymentID)
            """, on: connection)
        if let digest = result.imageDigest {
            // Pushed again (the same content built again): it is in the registry once more.
            try await execute("""
                DELETE FROM loco_pruned_images WHERE digest = \(digest)
                  AND app_id = (SELECT app_id FROM loco_deployments WHERE id = \(deploymentID))
                """, on: connection)
        }
        let what = service.map { "\(stage.rawValue) of \($0)" } ?? stage.rawValue
        try await appendEvent(deploymentID: deploymentID, type: "stage_finished", stage: stage.rawValue,
                              message: result.message ?? "\(what) finished", on: connection)
        if stage == .wait {
            return try await end(deploymentID: deploymentID, as: .succeeded, report: nil, message: "deployment \(deploymentID) succeeded", on: connection)
        }
        return []
    }

    /// Fails the deployment with its report: the rest of its jobs stop, a cleanup job removes what
    /// it created, the previous version keeps serving, the next deployment in line starts.
    public func fail(deploymentID: Int64, report: FailureReport, on connection: PostgresConnection) async throws -> [String] {
        guard let state = try await lockedState(deploymentID, on: connection), !state.isFinal else { return [] }
        return try await end(deploymentID: deploymentID, as: .failed, report: report,
                             message: "\(report.code): \(report.message)", on: connection)
    }

    /// Moves a locked, unfinished deployment to a final state. Returns the build contexts that no
    /// unfinished deployment needs any more (the caller deletes the files after commit).
    func end(deploymentID: Int64, as final: DeploymentState, report: FailureReport?, message: String,
             on connection: PostgresConnection) async throws -> [String] {
        let row = try await connection.run("""
            UPDATE loco_deployments d SET state = \(final.rawValue), finished_at = now(),
                   report = \(report.map { Storable.json(CoreJSON.encode($0)) })::jsonb,
                   cancel_requested = d.cancel_requested OR \(final == .cancelled),
                   in_line = false
            FROM loco_deployments old WHERE d.id = old.id AND d.id = \(deploymentID)
            RETURNING d.app_id, old.in_line, d.context_digest
            """, logger: logger)
        var appID: Int64 = 0, wasInLine = false, digest: String? = nil
        for try await (app, inLine, context) in row.decode((Int64, Bool, String?).self) {
            appID = app
            wasInLine = inLine
            digest = context
        }
        try await appendEvent(deploymentID: deploymentID, type: final.rawValue, stage: report?.stage, message: message,
                              data: report.map { JSONValue.parse(CoreJSON.encode($0)) ?? .null }, on: connection)
        if final != .succeeded {
            // Stop what is left of this deployment; running handlers are told at once (NOTIFY).
            try await jobs.cancel(ids: try await jobIDs(deploymentID: deploymentID, on: connection), on: connection)
            let started = try await scalar("SELECT count(*) FROM loco_deployment_jobs WHERE deployment_id = \(deploymentID)", as: Int64.self, on: connection) ?? 0
            if started > 0 {
                let job = try DeploymentPlan.job(.cleanup, deploymentID: deploymentID, outcome: final.rawValue, after: [])
                let id = try await jobs.enqueue(job, on: connection).id
                try await recordJobs(deploymentID: deploymentID, [(id, .cleanup, nil)], on: connection)
            }
        }
        if !wasInLine { try await releaseNext(appID: appID, after: deploymentID, on: connection) }
        return try await unreferencedContexts(digest.map { [$0] } ?? [], on: connection)
    }

    func jobIDs(deploymentID: Int64, on db: some QueryRunner) async throws -> [Int64] {
        var ids: [Int64] = []
        for try await id in try await db.run("SELECT job_id FROM loco_deployment_jobs WHERE deployment_id = \(deploymentID)", logger: logger).decode(Int64.self) {
            ids.append(id)
        }
        return ids
    }

    /// Starts the oldest deployment waiting in line for the app, if any.
    func releaseNext(appID: Int64, after endedID: Int64, on connection: PostgresConnection) async throws {
        let rows = try await connection.run("""
            UPDATE loco_deployments d SET in_line = false
            WHERE d.id = (SELECT id FROM loco_deployments WHERE app_id = \(appID) AND in_line AND state = 'queued' ORDER BY id LIMIT 1)
            RETURNING d.id, d.config::text, (SELECT type FROM loco_apps WHERE id = d.app_id), d.redeploy_of IS NOT NULL
            """, logger: logger)
        for try await (id, configText, type, prebuilt) in rows.decode((Int64, String, String, Bool).self) {
            try await enqueuePlan(deploymentID: id, type: AppType(rawValue: type) ?? .service, config: JSONValue.parse(configText) ?? .object([:]),
                                  prebuilt: prebuilt, on: connection)
            try await appendEvent(deploymentID: id, type: "released", stage: nil,
                                  message: "deployment \(endedID) ended; deployment \(id) starts", on: connection)
        }
    }

    /// Tells each deployment whose next stage sits in a paused queue (`locod queue pause`) why
    /// it waits, once per pause: an event the CLI shows as it follows the deployment. Driven
    /// from the pauses, so it costs nothing while no queue is paused. Returns how many it told.
    @discardableResult
    public func announcePausedStages(on db: some TransactionRunner) async throws -> Int {
        try await db.transaction { connection in
            // The pause's time, to the microsecond, names it: a later pause of the same queue is told again.
            let rows = try await connection.run("""
                SELECT d.id, dj.stage, p.queue, p.paused_by,
                       to_char(p.paused_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                       to_char(p.paused_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                FROM loco_queue_pauses p
                JOIN loco_jobs j ON j.queue = p.queue AND j.state = 'available'
                JOIN loco_deployment_jobs dj ON dj.job_id = j.id
                JOIN loco_deployments d ON d.id = dj.deployment_id
                WHERE NOT d.in_line AND d.state = ANY(\(DeploymentState.inFlight.map(\.rawValue))::text[])
                  AND NOT EXISTS (
                      SELECT FROM loco_deployment_events e
                      WHERE e.deployment_id = d.id AND e.type = 'queue_paused' AND e.data->>'queue' = p.queue
                        AND e.data->>'paused_at' = to_char(p.paused_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                ORDER BY d.id, dj.stage
                FOR UPDATE OF d SKIP LOCKED
                """, logger: logger)
            var told: [(Int64, String, String, String?, String, String)] = []
            var seen = Set<String>()
            for try await row in rows.decode((Int64, String, String, String?, String, String).self) {
                // One event per deployment and queue, however many of its jobs wait there.
                if seen.insert("\(row.0) \(row.2)").inserted { told.append(row) }
            }
            for (id, stage, queue, by, since, pausedAt) in told {
                let note = by.map { ", \($0)" } ?? ""
                try await appendEvent(
                    deploymentID: id, type: "queue_paused", stage: stage,
                    message: "\(stage) waits: the operator paused the \(queue) queue (since \(since) UTC\(note)); it starts once the queue is resumed",
                    data: .object(["queue": .string(queue), "paused_at": .string(pausedAt)]), on: connection)
            }
            return told.count
        }
    }

    /// A backstop for deployments whose job ended without the handler recording it (a worker that
    /// died on the last attempt, an operator who cancelled a job by hand): the deployment fails
    /// with a report built from the job's own error history. Returns the contexts to delete.
    public func reconcile(on db: some TransactionRunner) async throws -> [String] {
        try await db.transaction { connection in
            // Driven from recently finished jobs (an index covers them), not from every deployment
            // in flight, so it stays cheap however many deployments wait.
            let rows = try await connection.run("""
                SELECT d.id, dj.stage, j.state, j.errors::text FROM loco_jobs j
                JOIN loco_deployment_jobs dj ON dj.job_id = j.id
                JOIN loco_deployments d ON d.id = dj.deployment_id
                WHERE j.state IN ('failed','cancelled') AND j.finalized_at > now() - interval '7 days'
                  AND dj.stage <> 'cleanup' AND NOT d.in_line
                  AND d.state = ANY(\(DeploymentState.inFlight.map(\.rawValue))::text[])
                ORDER BY d.id, j.id
                FOR UPDATE OF d SKIP LOCKED
                """, logger: logger)
            var stuck: [Int64: (String, String, String)] = [:]
            for try await (id, stage, state, errors) in rows.decode((Int64, String, String, String).self) where stuck[id] == nil {
                stuck[id] = (stage, state, errors)
            }
            var released: [String] = []
            for (id, (stage, state, errorsText)) in stuck.sorted(by: { $0.key < $1.key }) {
                let report = endedJobReport(deploymentID: id, stage: stage, state: state, errorsText: errorsText)
                released += try await end(deploymentID: id, as: .failed, report: report, message: "\(report.code): \(report.message)", on: connection)
            }
            for (id, stage, ended) in try await deploymentsLeftBehind(on: connection) {
                let report = ended.map { endedJobReport(deploymentID: id, stage: stage, state: $0.state, errorsText: $0.errors) } ?? FailureReport(
                    stage: stage,
                    code: "JOB_GONE",
                    message: "the \(stage) stage's job ended without a result and was deleted before the deployment heard of it, so its error history is gone",
                    hint: "Deploy again with 'loco deploy'. If this repeats, ask your operator to keep a 'locod api' running (it records such endings within seconds) or to keep finished jobs longer ('locod worker --failed-retention-hours', '--cancelled-retention-hours').",
                    evidence: ["job_state": .string("deleted")],
                    attempts: [])
                released += try await end(deploymentID: id, as: .failed, report: report, message: "\(report.code): \(report.message)", on: connection)
            }
            return released
        }
    }

    /// The report for a stage whose job failed or was cancelled without recording it, built from
    /// the job's own error history.
    func endedJobReport(deploymentID id: Int64, stage: String, state: String, errorsText: String) -> FailureReport {
        let attempts: [JSONValue]
        if case .array(let list)? = JSONValue.parse(errorsText) { attempts = list } else { attempts = [] }
        let last = attempts.last
        let code = last?["code"]?.stringValue ?? (state == "cancelled" ? "job_cancelled" : "unknown")
        let message = last?["message"]?.stringValue ?? "the \(stage) job was \(state) without a result"
        let showAndRedeploy = "Run 'loco deployment show \(id)' for each attempt's error; deploy again with 'loco deploy' once the cause is fixed."
        let (reportCode, reportMessage, hint): (String, String, String) = switch code {
        case "lease_expired":
            ("WORKER_LOST", "the \(stage) worker stopped answering and the stage ran out of attempts", showAndRedeploy)
        case "job_timeout":
            ("JOB_TIMEOUT", "the \(stage) stage ran past the workers' job timeout on its last attempt (\(message))",
             "Deploy again; if the \(stage) stage keeps taking this long, ask your operator to raise 'locod worker --job-timeout-seconds' for the \(stage) workers.")
        default:
            (code.uppercased(), message, showAndRedeploy)
        }
        return FailureReport(stage: stage, code: reportCode, message: reportMessage, hint: hint,
                             evidence: ["job_state": .string(state)], attempts: attempts)
    }

    /// Deployments in flight for over an hour with nothing left to run (no stage job blocked,
    /// scheduled, available or running) and a stage job that failed, was cancelled, or no longer
    /// exists. The query above starts from jobs that ended in the last 7 days; this one catches
    /// what it cannot see: a job pruned (after its retention period, a day for cancelled jobs by
    /// default) or ended longer ago, while no reconciler ran. Without it such a deployment would
    /// stay in flight forever and refuse every later deploy of its app. Returns, per deployment,
    /// the stage to report and that stage job's state and errors, nil when the job is gone.
    func deploymentsLeftBehind(on connection: PostgresConnection) async throws -> [(Int64, String, (state: String, errors: String)?)] {
        // The state list matches the predicate of loco_deployments_one_in_flight, so that partial
        // index bounds the scan to the deployments in flight.
        let rows = try await connection.run("""
            SELECT d.id, d.state, dj.stage, j.state::text, j.errors::text
            FROM loco_deployments d
            JOIN loco_deployment_jobs dj ON dj.deployment_id = d.id AND dj.stage <> 'cleanup'
            LEFT JOIN loco_jobs j ON j.id = dj.job_id
            WHERE d.state IN ('queued','building','pushing','applying','waiting') AND NOT d.in_line
              AND d.created_at < now() - interval '1 hour'
              AND (j.id IS NULL OR j.state IN ('failed','cancelled'))
              AND NOT EXISTS (SELECT FROM loco_deployment_jobs live JOIN loco_jobs lj ON lj.id = live.job_id
                              WHERE live.deployment_id = d.id AND live.stage <> 'cleanup'
                                AND lj.state IN ('blocked','scheduled','available','running'))
            ORDER BY d.id, dj.job_id
            FOR UPDATE OF d SKIP LOCKED
            """, logger: logger)
        var byDeployment: [Int64: (state: String, ended: [(stage: String, job: (state: String, errors: String)?)])] = [:]
        for try await (id, state, stage, jobState, errors) in rows.decode((Int64, String, String, String?, String?).self) {
            byDeployment[id, default: (state, [])].ended.append((stage, jobState.map { ($0, errors ?? "[]") }))
        }
        return byDeployment.sorted { $0.key < $1.key }.compactMap { id, found in
            // The stage the deployment was in, if its job is among the ended; else the first in
            // pipeline order; and of that stage's jobs (one per service), one that still has a history.
            let current = Stage.allCases.first { $0.runningState?.rawValue == found.state }?.rawValue
            let stages = found.ended.map(\.stage)
            guard let stage = current.flatMap({ stages.contains($0) ? $0 : nil })
                    ?? Stage.allCases.map(\.rawValue).first(where: stages.contains) ?? stages.first else { return nil }
            let jobs = found.ended.filter { $0.stage == stage }
            return (id, stage, jobs.compactMap(\.job).first)
        }
    }
}
