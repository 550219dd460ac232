import ArgumentParser
import BuildContext
import Foundation
import Hummingbird
import Logging
import LocoCore
import LocoQueue
import PostgresNIO
import ServiceLifecycle
import UnixSignals
import Workers

struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run worker pools: one per --queue, each with its own concurrency.",
        discussion: """
            Examples:
              locod worker --queue build --concurrency 4
              locod worker --queue build=2 --queue push=4
              locod worker --queue build --queue push --concurrency 2 --concurrency 8
            SIGTERM or SIGINT stops claiming, lets running jobs finish within --grace-seconds,
            then returns the rest to the queue.
            """
    )

    @OptionGroup var database: DatabaseOptions

    @Option(name: .customLong("queue"), help: "A queue to work, as NAME or NAME=CONCURRENCY (repeatable).")
    var queues: [String] = []

    @Option(name: .customLong("concurrency"), help: "Concurrency per --queue, in the same order; one value applies to all. Default 10.")
    var concurrencies: [Int] = []

    @Option(help: "Lease length in seconds: a job whose worker stops heartbeating is rescued after this.")
    var leaseSeconds: Double = 30

    @Option(help: "Fallback poll interval in milliseconds.")
    var pollIntervalMs: Int = 1000

    @Flag(help: "Poll only: no LISTEN, prepared statements or session settings (PgBouncer in transaction mode; a URL with ?pgbouncer=true implies it).")
    var pollOnly = false

    @Option(help: "Seconds running jobs get to finish on shutdown.")
    var graceSeconds: Double = 30

    @Option(help: "Seconds a job may run before its handler is cancelled and the attempt fails as retryable 'job_timeout' (default: no limit; a job kind's own timeout comes first).")
    var jobTimeoutSeconds: Double?

    @Option(help: "How often to look for expired leases and dead workers, in milliseconds.")
    var rescueIntervalMs: Int = 2000

    @Option(help: "Seconds a dead worker's jobs keep their leases once its database session has ended (a poll-only worker: once its presence row went unseen this long, at least 3 s).")
    var orphanGraceSeconds: Double = 5

    @Option(help: "Retry backoff base in milliseconds (full jitter, doubling per attempt).")
    var retryBaseMs: Int = 1000

    @Option(help: "Retry backoff cap in seconds.")
    var retryCapSeconds: Int = 600

    @Option(help: "Keep finished jobs this many hours before pruning, whatever their state (default: per state, below).")
    var retentionHours: Double?

    @Option(help: "Keep completed jobs this many hours (default: --retention-hours, else 24).")
    var completedRetentionHours: Double?

    @Option(help: "Keep cancelled jobs this many hours (default: --retention-hours, else 24).")
    var cancelledRetentionHours: Double?

    @Option(help: "Keep failed jobs this many hours (default: --retention-hours, else 168).")
    var failedRetentionHours: Double?

    @Flag(help: "Do not run the rescuer, scheduler, pruner and periodic jobs in this process.")
    var noMaintenance = false

    @Option(help: "Serve Prometheus metrics on --metrics-host:PORT/metrics, and /healthz (503 while a part of the worker is stuck) (0: off).")
    var metricsPort: Int = 0

    @Option(help: "Address the metrics server listens on (0.0.0.0: every interface, for a Prometheus elsewhere).")
    var metricsHost = "127.0.0.1"

    @Flag(help: "Also handle the demo job kinds (demo.noop, demo.sleep, demo.flaky, demo.fail).")
    var demoKinds = false

    @Option(help: "Worker id written to the jobs it holds (default: host-pid-random).")
    var workerID: String?

    @OptionGroup(title: "Build and push stages (for --queue build / --queue push)") var stages: StageOptions

    func slots() throws -> [WorkerConfiguration.QueueSlot] {
        guard !queues.isEmpty else {
            throw UsageError(message: "no queue given", hint: "Name at least one: locod worker --queue build --concurrency 4")
        }
        guard concurrencies.count <= 1 || concurrencies.count == queues.count else {
            throw UsageError(message: "\(queues.count) queues but \(concurrencies.count) concurrencies",
                             hint: "Give one --concurrency for all queues, one per --queue, or use --queue NAME=N.")
        }
        var named = Set<String>()
        return try queues.enumerated().map { index, spec in
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            var concurrency = concurrencies.count == 1 ? concurrencies[0] : (concurrencies.isEmpty ? 10 : concurrencies[index])
            if parts.count == 2 {
                guard let parsed = Int(parts[1]) else {
                    throw UsageError(message: "'\(spec)' is not NAME=CONCURRENCY", hint: "Write e.g. --queue build=4.")
                }
                concurrency = parsed
            }
            let name = parts.first ?? spec
            guard named.insert(name).inserted else {
                throw UsageError(message: "--queue \(name) is given twice (a worker runs one pool per queue)",
                                 hint: "Name each queue once, with its whole concurrency: --queue \(name)=20.")
            }
            let range = WorkerConfiguration.concurrencyRange
            guard range.contains(concurrency) else {
                throw UsageError(message: "the concurrency of --queue \(name) must be from \(range.lowerBound) to \(range.upperBound) (got \(concurrency))",
                                 hint: "Write e.g. --queue \(name)=4.")
            }
            return .init(name: name, concurrency: concurrency)
        }
    }

    /// A state's own flag, else --retention-hours, else the default for that state.
    func retention() throws -> Retention {
        let all = try retentionHours.map { try durationOption(seconds: $0 * 3600, option: "--retention-hours", atLeast: 0, example: "168") }
        let defaults = all.map { Retention(all: $0) } ?? Retention()
        func period(_ hours: Double?, _ option: String, _ fallback: Duration) throws -> Duration {
            try hours.map { try durationOption(seconds: $0 * 3600, option: option, atLeast: 0, example: "24") } ?? fallback
        }
        return Retention(completed: try period(completedRetentionHours, "--completed-retention-hours", defaults.completed),
                         cancelled: try period(cancelledRetentionHours, "--cancelled-retention-hours", defaults.cancelled),
                         failed: try period(failedRetentionHours, "--failed-retention-hours", defaults.failed))
    }

    func run() async throws {
        try await reportingErrors {
            let url = try database.url()
            let logger = database.logger("locod.worker")
            var configuration = WorkerConfiguration(queues: try slots())
            if let workerID { configuration.workerID = workerID }
            configuration.leaseDuration = try durationOption(seconds: leaseSeconds, option: "--lease-seconds", atLeast: 1, example: "30")
            configuration.pollInterval = try durationOption(seconds: Double(pollIntervalMs) / 1000, option: "--poll-interval-ms", atLeast: 0.001, example: "1000")
            configuration.pollOnly = pollOnly
            configuration.gracePeriod = try durationOption(seconds: graceSeconds, option: "--grace-seconds", atLeast: 0, example: "30")
            configuration.rescueInterval = try durationOption(seconds: Double(rescueIntervalMs) / 1000, option: "--rescue-interval-ms", atLeast: 0.001, example: "2000")
            configuration.orphanGrace = try durationOption(seconds: orphanGraceSeconds, option: "--orphan-grace-seconds", atLeast: 1, example: "5")
            configuration.jobTimeout = try jobTimeoutSeconds.map { try durationOption(seconds: $0, option: "--job-timeout-seconds", atLeast: 0.001, example: "600") }
            configuration.retry = RetryPolicy(base: try durationOption(seconds: Double(retryBaseMs) / 1000, option: "--retry-base-ms", atLeast: 0, example: "1000"),
                                              cap: try durationOption(seconds: Double(retryCapSeconds), option: "--retry-cap-seconds", atLeast: 0, example: "600"))
            configuration.retention = try retention()
            configuration.runMaintenance = !noMaintenance
            try checkedOption(metricsPort, "--metrics-port", in: 0...65_535, example: "9464")
            try checkedHost(metricsHost, "--metrics-host")
            try stages.checkRanges()
            configuration.periodicJobs = PeriodicJobs.all

            var handlers = JobHandlers()
            if demoKinds { DemoJobs.register(in: &handlers) }
            // A pool claims every job of its queue; with no handler for any of them it would only
            // fail them one after another with unknown_kind.
            let worked = Stage.allCases.map(\.queue)
            if !demoKinds, let idle = configuration.queues.first(where: { !worked.contains($0.name) }) {
                throw UsageError(message: "locod has no job kinds for queue '\(idle.name)': every job claimed there would fail with unknown_kind",
                                 hint: "locod works the queues \(worked.joined(separator: ", ")); --demo-kinds adds demo.noop, demo.sleep, demo.flaky and demo.fail on any queue.")
            }

            try await preflight(url, logger: logger)
            await warnAboutPendingMigrations(url: url, logger: logger)
            await noticePausedQueues(configuration.queues.map(\.name), url: url, logger: logger)
            // The deploy stages this process works, by queue name.
            let stageQueues = Set(configuration.queues.compactMap { Stage(rawValue: $0.name) })
            var stagePool: ConnectionPool?
            if !stageQueues.isEmpty {
                let pool = ConnectionPool(url: url, size: 4, logger: logger)
                stagePool = pool
                let settings = try stages.settings()
                if !stageQueues.isDisjoint(with: [.build, .push]) {
                    try DeployStages(database: pool, settings: settings, logger: logger).register(in: &handlers, stages: stageQueues)
                }
                if !stageQueues.isDisjoint(with: [.apply, .wait, .cleanup]) {
                    let runtime = try stages.runtime(settings, logger: logger)
                    RuntimeStages(database: pool, runtime: runtime, pullCredentials: settings.registryCredentials,
                                  rolloutTimeout: .seconds(stages.rolloutTimeoutSeconds), logger: logger).register(in: &handlers, stages: stageQueues)
                    if stageQueues.contains(.cleanup) {
                        CleanupStage(database: pool, runtime: runtime,
                                     registry: RegistryClient(base: settings.registryURL, credentials: settings.registryCredentials, logger: logger),
                                     settings: settings, keepImages: stages.keepImages, logger: logger).register(in: &handlers)
                    }
                }
            }
            let metrics = QueueMetrics()
            let worker = try QueueWorker(databaseURL: url, handlers: handlers, configuration: configuration, metrics: metrics, logger: logger)
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: worker)]
            var metricsDatabase: ReconnectingConnection?
            if metricsPort > 0 {
                let database = ReconnectingConnection(url: url, logger: logger)
                metricsDatabase = database
                // Its failure stops the worker gracefully (claims stop, running jobs finish) and
                // locod exits with its error, where by default the group would cancel the worker.
                services.append(.init(service: MetricsServer.make(host: metricsHost, port: metricsPort, database: database, metrics: metrics, worker: worker, logger: logger),
                                      failureTerminationBehavior: .gracefullyShutdownGroup))
            }
            // Shutdown runs in reverse order: the metrics server first, then the worker.
            let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            let outcome = await Result { try await group.run() }
            // Closed, not just dropped: PostgresNIO asserts (debug builds) when an open
            // connection is deallocated, which crashed a worker stopped after a /metrics scrape.
            await metricsDatabase?.close()
            await stagePool?.close()
            try outcome.mapError { error in
                guard metricsPort > 0 else { return error }
                return ListenError(explaining: error, serving: "metrics", host: metricsHost, port: metricsPort,
                                   hostOption: "--metrics-host", portOption: "--metrics-port", portOff: "0 serves none") ?? error
            }.get()
        }
    }
}

/// Says at start which migrations of this locod the database lacks: a worker or an API started
/// before 'locod migrate' ran fails whatever needs them, and the first error it logs names a
/// table, not the step that was missed. Started all the same: a deploy may migrate just after.
func warnAboutPendingMigrations(url: DatabaseURL, logger: Logger) async {
    let pool = ConnectionPool(url: url, size: 1, logger: logger)
    let statuses = try? await Migrator(database: pool, logger: logger).status(LocodSchema.all)
    await pool.close()
    let pending = (statuses ?? []).filter(\.isPending).map(\.label)
    guard !pending.isEmpty else { return }
    let error = QueueError.migrationsPending(database: url.database, pending: pending)
    logger.warning("\(error.message); run 'locod migrate' (what needs them fails until then)", metadata: ["code": "\(error.code)"])
}

/// Says at start which of this worker's queues are paused, so an operator who starts a worker
/// and sees nothing happen knows why.
func noticePausedQueues(_ queues: [String], url: DatabaseURL, logger: Logger) async {
    let connection = ReconnectingConnection(url: url, logger: logger)
    // Before migration 3 there is no pause table: then nothing is paused.
    let pauses = try? await JobStore(logger: logger).pausedQueues(on: connection)
    await connection.close()
    guard let pauses else { return }
    for pause in pauses where queues.contains(pause.queue) {
        logger.notice("queue \(pause.queue) is paused: this worker starts none of its jobs until 'locod queue resume \(pause.queue)'",
                      metadata: ["paused_at": "\(pause.pausedAt.formatted(.iso8601))", "paused_by": "\(pause.pausedBy ?? "-")"])
    }
}

/// `/metrics` (Prometheus text) and `/healthz` for a worker process.
enum MetricsServer {
    static func make(host: String, port: Int, database: ReconnectingConnection, metrics: QueueMetrics, worker: QueueWorker, logger: Logger) -> some Service {
        let router = Router()
        let store = JobStore(logger: logger)
        router.get("/metrics") { _, _ -> Response in
            if let stats = try? await store.stats(on: database, includingFinished: false) { metrics.update(from: stats) }
            if let slots = try? await store.cronSlots(on: database), let settings = try? await store.cronSettings(on: database) {
                metrics.updatePeriodic(lastSlots: slots, settings: settings)
            }
            if let usage = try? await store.notificationQueueUsage(on: database) { metrics.updateNotificationQueue(usage: usage) }
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: metrics.render())))
        }
        // 503 while a part of the worker is stuck past its deadlines (its watchdog says which):
        // a liveness probe then restarts the worker, which is what the log line advises.
        router.get("/healthz") { _, _ -> Response in
            let stalled = worker.stalledParts
            let body = stalled.isEmpty ? "ok\n" : "stalled: " + stalled.joined(separator: "; ") + "\n"
            return Response(status: stalled.isEmpty ? .ok : .serviceUnavailable, headers: [.contentType: "text/plain; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        return Application(router: router, configuration: .init(address: .hostname(host, port: port)), logger: logger)
    }
}

/// Periodic jobs declared in code; `locod cron NAME` enqueues one slot of any of them.
enum PeriodicJobs {
    static var all: [PeriodicJob] {
        [
            // Registry lifecycle: old images out, then the registry's garbage collection.
            PeriodicJob(name: "registry-cleanup", schedule: try! CronSchedule("0 3 * * *"), queue: "cleanup", kind: "registry.cleanup"),
        ]
    }
}

/// Settings of the build and push stages.
struct StageOptions: ParsableArguments {
    @Option(help: "Where uploaded build contexts are (the API's --context-dir; default $LOCO_CONTEXT_DIR or ./.loco/contexts).")
    var contextDir: String?
    @Option(help: "Where builds unpack and images are handed over (default $LOCO_WORK_DIR or ./.loco/work).")
    var workDir: String?
    @Option(help: "The OCI registry images go to (default $LOCO_REGISTRY_URL or http://127.0.0.1:5000).")
    var registry: String?
    @Option(help: "File holding this worker's token for the registry (default: $LOCO_WORKER_TOKEN).")
    var registryTokenFile: String?
    @Option(help: "Registries buildah may reach over plain HTTP (repeatable; the --registry host is always one when it is http://).")
    var insecureRegistry: [String] = []
    @Option(help: "Seconds a build may take.") var buildTimeoutSeconds = 1800
    @Option(help: "Memory one build may use, RUN steps included, in MiB (0: no limit).") var buildMemoryMib = 4096
    @Option(help: "Largest image accepted, in MiB (compressed layers).") var maxImageMib = 2048
    @Option(help: "Image format: oci or docker.") var imageFormat = "oci"
    @Option(help: "How built images reach the push stage: shared-disk (an OCI layout in --work-dir) or push-from-builder (no shared folder needed).")
    var handoff = "shared-disk"
    @Option(help: "Where apps run (apply/wait/cleanup): local (podman on this machine). Default: $LOCO_RUNTIME or local.")
    var runtime: String?
    @Option(help: "Seconds a new version may take to become ready.") var rolloutTimeoutSeconds = 60
    @Option(help: "Images kept per app in the registry after a success.") var keepImages = 2

    func runtime(_ settings: StageSettings, logger: Logger) throws -> any Runtime {
        let name = runtime ?? ProcessInfo.processInfo.environment["LOCO_RUNTIME"] ?? "local"
        guard name == "local" else {
            throw UsageError(message: "--runtime \(name) is not available", hint: "Use --runtime local (podman); the Kubernetes runtime comes next.")
        }
        return try PodmanRuntime(stateFolder: settings.workFolder.appending(path: "podman"), insecureRegistries: settings.builder.insecureRegistries, logger: logger)
    }

    /// Not `validate()`: ArgumentParser would call that itself and print its errors without our hint.
    func checkRanges() throws {
        try checkedOption(buildTimeoutSeconds, "--build-timeout-seconds", in: 1...604_800, example: "1800")
        try checkedOption(buildMemoryMib, "--build-memory-mib", in: 0...1_048_576, example: "4096")
        try checkedOption(maxImageMib, "--max-image-mib", in: 1...1_048_576, example: "2048")
        try checkedOption(rolloutTimeoutSeconds, "--rollout-timeout-seconds", in: 1...86_400, example: "60")
        try checkedOption(keepImages, "--keep-images", in: 1...1000, example: "2")
    }

    func settings() throws -> StageSettings {
        let environment = ProcessInfo.processInfo.environment
        guard ["oci", "docker"].contains(imageFormat) else { throw UsageError(message: "--image-format \(imageFormat) is not oci or docker", hint: "Use --image-format oci.") }
        guard let handoffMode = ImageHandoff(rawValue: handoff) else {
            throw UsageError(message: "--handoff \(handoff) is unknown", hint: "Use shared-disk or push-from-builder.")
        }
        let registryURL = registry ?? environment["LOCO_REGISTRY_URL"] ?? "http://127.0.0.1:5000"
        guard registryURL.hasPrefix("http://") || registryURL.hasPrefix("https://") else {
            throw UsageError(message: "--registry \(registryURL) is not an http:// or https:// URL", hint: "Write e.g. --registry http://127.0.0.1:5000.")
        }
        var token = environment["LOCO_WORKER_TOKEN"]
        if let registryTokenFile {
            guard let text = try? String(contentsOfFile: registryTokenFile, encoding: .utf8) else {
                throw UsageError(message: "cannot read \(registryTokenFile)", hint: "Write the worker token (locod admin create-token --worker NAME) to that file.")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let host = registryURL.replacingOccurrences(of: "http://", with: "").replacingOccurrences(of: "https://", with: "")
        // The same registry by its other loopback name: Dockerfiles often say localhost:PORT.
        let aliases = [host, host.replacingOccurrences(of: "127.0.0.1:", with: "localhost:"), host.replacingOccurrences(of: "localhost:", with: "127.0.0.1:")]
        let registryHosts = Array(Set(aliases)).sorted()
        let insecure = insecureRegistry + (registryURL.hasPrefix("http://") ? registryHosts : [])
        let contexts = ContextStore(root: URL(fileURLWithPath: contextDir ?? environment["LOCO_CONTEXT_DIR"] ?? ".loco/contexts"))
        let work = URL(fileURLWithPath: workDir ?? environment["LOCO_WORK_DIR"] ?? ".loco/work")
        return StageSettings(
            contexts: contexts, workFolder: work,
            builder: BuilderConfiguration(stateFolder: work.appending(path: "buildah"), insecureRegistries: insecure,
                                          timeout: .seconds(buildTimeoutSeconds), maxImageBytes: Int64(maxImageMib) * 1024 * 1024, format: imageFormat,
                                          memoryLimitBytes: buildMemoryMib > 0 ? Int64(buildMemoryMib) * 1024 * 1024 : nil,
                                          baseImageCredentials: token.map { RegistryCredentials(username: "loco-worker", password: $0) },
                                          baseImageRegistries: registryHosts),
            registryURL: registryURL, registryCredentials: token.map { RegistryCredentials(username: "loco-worker", password: $0) },
            handoff: handoffMode)
    }
}
