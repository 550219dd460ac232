import ArgumentParser
import Foundation
import Logging
import LocoQueue
import PostgresNIO
import Synchronization

/// `locod bench queue`: the queue's throughput and latency on this machine, as one JSON object.
/// scripts/bench runs it several times (with pgbench as the same-run baseline) and takes medians.
struct BenchQueue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "queue", abstract: "Queue throughput and latency, printed as JSON.")

    @OptionGroup var database: DatabaseOptions
    @Option(help: "Jobs per throughput phase.") var jobs = 20_000
    @Option(help: "Worker concurrency for the drains.") var concurrency = 10
    @Option(help: "Jobs per second in the latency phase.") var latencyRate = 200
    @Option(help: "Seconds of the latency phase.") var latencySeconds = 10
    @Option(help: "Jobs already queued in another queue during the last drain.") var backlog = 1_000_000
    @Option(help: "Producers, each on a connection of its own, for the concurrent single enqueues.") var producers = 8
    @Option(help: "The same server by Unix socket (postgres://user@/db?host=DIR&port=N): also measure single enqueues over it.")
    var socketURL: String?
    @Option(help: "Microseconds a single enqueue may poll for its answer in the busy-polling phase (the URL's busy_poll); 0 skips that phase.")
    var busyPoll = 500

    func validate() throws {
        guard (0...DatabaseURL.busyPollLimit).contains(busyPoll) else {
            throw ValidationError("--busy-poll takes microseconds from 0 to \(DatabaseURL.busyPollLimit) (0 skips the busy-polling phase); got \(busyPoll)")
        }
    }

    func run() async throws {
        try await reportingErrors {
            let server = try database.url()
            var logger = database.logger("locod.bench")
            logger.logLevel = .warning
            let name = "loco_bench_\(UInt32.random(in: 0...UInt32.max))"
            let admin = ReconnectingConnection(url: server, logger: logger, queryTimeout: .seconds(600))
            _ = try await admin.run(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: logger)
            let url = server.with(database: name)
            let socket = try socketURL.map { try DatabaseURL($0).with(database: name) }
            var busyPolling: DatabaseURL?
            if busyPoll > 0 {
                busyPolling = url
                busyPolling?.busyPoll = .microseconds(busyPoll)
            }
            let bench = QueueBench(url: url, socketURL: socket, busyPollURL: busyPolling, logger: logger, jobs: jobs, concurrency: concurrency,
                                   producers: producers)
            let outcome = await Result(catching: { try await bench.run(latencyRate: latencyRate, latencySeconds: latencySeconds, backlog: backlog) })
            _ = try? await admin.run(PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)"), logger: logger)
            await admin.close()
            try printJSON(try outcome.get())
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

struct QueueBenchResult: Encodable {
    var jobs: Int
    var concurrency: Int
    var enqueueSingleJobsPerSecond: Double
    var enqueueSingleUnpinnedJobsPerSecond: Double
    var enqueueSingleUnixSocketJobsPerSecond: Double?
    var enqueueSingleCPUMicrosecondsPerJob: Double
    var busyPollMicroseconds: Int?
    var enqueueSingleBusyPollJobsPerSecond: Double?
    var enqueueSingleBusyPollRatio: Double?
    var enqueueSingleBusyPollCPUMicrosecondsPerJob: Double?
    var producers: Int
    var enqueueSingleConcurrentJobsPerSecond: Double
    var enqueueBatchJobsPerSecond: Double
    var enqueueBatchPinnedJobsPerSecond: Double
    var drainJobsPerSecond: Double
    var backlogJobs: Int
    var drainWithBacklogJobsPerSecond: Double
    var drainAfterBacklogJobsPerSecond: Double
    var drainWithBacklogRatio: Double
    var drainDependentsJobsPerSecond: Double
    var drainDependentsRatio: Double
    var startLatencyMs: Latency

    struct Latency: Encodable {
        var ratePerSecond: Int
        var samples: Int
        var p50: Double
        var p99: Double
        var max: Double
        /// The same samples split in two: the enqueue's own round trip (its durable commit, after
        /// which the notification goes out), and what came after it until the handler started.
        var enqueue: Percentiles
        var afterEnqueue: Percentiles
        /// Over the slowest 1% of samples: the median share of their time the enqueue took.
        var slowestEnqueueShare: Double

        enum CodingKeys: String, CodingKey {
            case ratePerSecond = "rate_per_s", samples, p50, p99, max
            case enqueue = "enqueue_ms", afterEnqueue = "after_enqueue_ms", slowestEnqueueShare = "slowest_1pct_enqueue_share"
        }
    }

    struct Percentiles: Encodable {
        var p50: Double
        var p99: Double
        var max: Double

        init(_ values: [Double]) {
            let sorted = values.sorted()
            func at(_ p: Double) -> Double {
                guard !sorted.isEmpty else { return .nan }
                let value = sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
                return (value * 1000).rounded() / 1000
            }
            (p50, p99, max) = (at(0.5), at(0.99), at(1))
        }
    }

    enum CodingKeys: String, CodingKey {
        case jobs, concurrency
        case enqueueSingleJobsPerSecond = "enqueue_single_jobs_per_s"
        case enqueueSingleUnpinnedJobsPerSecond = "enqueue_single_unpinned_jobs_per_s"
        case enqueueSingleUnixSocketJobsPerSecond = "enqueue_single_unix_socket_jobs_per_s"
        case enqueueSingleCPUMicrosecondsPerJob = "enqueue_single_cpu_us_per_job"
        case busyPollMicroseconds = "busy_poll_us"
        case enqueueSingleBusyPollJobsPerSecond = "enqueue_single_busy_poll_jobs_per_s"
        case enqueueSingleBusyPollRatio = "enqueue_single_busy_poll_ratio"
        case enqueueSingleBusyPollCPUMicrosecondsPerJob = "enqueue_single_busy_poll_cpu_us_per_job"
        case producers
        case enqueueSingleConcurrentJobsPerSecond = "enqueue_single_concurrent_jobs_per_s"
        case enqueueBatchJobsPerSecond = "enqueue_batch_jobs_per_s"
        case enqueueBatchPinnedJobsPerSecond = "enqueue_batch_pinned_jobs_per_s"
        case drainJobsPerSecond = "drain_jobs_per_s"
        case backlogJobs = "backlog_jobs"
        case drainWithBacklogJobsPerSecond = "drain_with_backlog_jobs_per_s"
        case drainAfterBacklogJobsPerSecond = "drain_after_backlog_jobs_per_s"
        case drainWithBacklogRatio = "drain_with_backlog_ratio"
        case drainDependentsJobsPerSecond = "drain_dependents_jobs_per_s"
        case drainDependentsRatio = "drain_dependents_ratio"
        case startLatencyMs = "start_latency_ms"
    }
}

struct QueueBench {
    let url: DatabaseURL
    let socketURL: DatabaseURL?
    /// `url` with `busy_poll`, for single enqueues that poll for their answers; nil to skip them.
    let busyPollURL: DatabaseURL?
    let logger: Logger
    let jobs: Int
    let concurrency: Int
    let producers: Int

    var store: JobStore { JobStore(logger: logger) }

    func run(latencyRate: Int, latencySeconds: Int, backlog: Int) async throws -> QueueBenchResult {
        let db = ReconnectingConnection(url: url, logger: logger, queryTimeout: .seconds(600))
        try await migrate()

        try await checkpoint(db)
        let (single, unpinned, busyPolling) = try await enqueueOneAtATime(on: db)
        let perJob = { (cpu: Duration) in (cpu.seconds * 1_000_000 / Double(jobs) * 10).rounded() / 10 }
        try await reset(db)
        var overSocket: Duration?
        if let socketURL {
            let socket = ReconnectingConnection(url: socketURL, logger: logger)
            overSocket = try await socket.pinned { try await timed { try await enqueueSingles(jobs, on: socket) } }
            await socket.close()
            try await reset(db)
        }

        let concurrent = try await enqueueConcurrently()
        try await reset(db)

        let (batched, batchedPinned) = try await enqueueInBatches(on: db)
        // The drain takes N jobs, as before there were two kinds of batches.
        try await reset(db)
        try await enqueueBatches(queue: "bench", on: db)
        try await vacuum(db)
        let drain = try await drainQueue("bench", on: db)

        // Half the jobs wait on the other half (parent and child pairs): each parent's completion
        // releases its child in its own transaction, and then wakes the child's queue.
        try await reset(db)
        try await enqueuePairs(queue: "bench", on: db)
        try await vacuum(db)
        let drainDependents = try await drainQueue("bench", on: db)

        try await reset(db)
        let latency = try await startLatency(rate: latencyRate, seconds: latencySeconds, on: db)

        try await reset(db)
        _ = try await db.run("""
            INSERT INTO loco_jobs (queue, kind, args, state)
            SELECT 'backlog', 'bench.noop', '{}', 'available' FROM generate_series(1, \(backlog))
            """, logger: logger)
        try await enqueueBatches(queue: "bench", on: db)
        try await vacuum(db)
        let drainWithBacklog = try await drainQueue("bench", on: db)
        // The plain drain once more, after the backlog's: the ratio compares the backlog drain
        // with the mean of the drains on either side of it, so that a machine that slows down
        // (or speeds up) through the run does not pass for the backlog's cost. Compared with the
        // first drain alone, one machine's ratio was under 0.9 in all of three runs.
        try await reset(db)
        try await enqueueBatches(queue: "bench", on: db)
        try await vacuum(db)
        let drainAfterBacklog = try await drainQueue("bench", on: db)
        await db.close()

        return QueueBenchResult(
            jobs: jobs, concurrency: concurrency,
            enqueueSingleJobsPerSecond: rate(jobs, single.wall), enqueueSingleUnpinnedJobsPerSecond: rate(jobs, unpinned),
            enqueueSingleUnixSocketJobsPerSecond: overSocket.map { rate(jobs, $0) },
            enqueueSingleCPUMicrosecondsPerJob: perJob(single.cpu),
            busyPollMicroseconds: busyPollURL?.busyPollMicroseconds,
            enqueueSingleBusyPollJobsPerSecond: busyPolling.map { rate(jobs, $0.wall) },
            enqueueSingleBusyPollRatio: busyPolling.map { (rate(jobs, $0.wall) / rate(jobs, single.wall) * 1000).rounded() / 1000 },
            enqueueSingleBusyPollCPUMicrosecondsPerJob: busyPolling.map { perJob($0.cpu) },
            producers: producers, enqueueSingleConcurrentJobsPerSecond: rate(jobs, concurrent),
            enqueueBatchJobsPerSecond: rate(jobs, batched), enqueueBatchPinnedJobsPerSecond: rate(jobs, batchedPinned),
            drainJobsPerSecond: rate(jobs, drain), backlogJobs: backlog,
            drainWithBacklogJobsPerSecond: rate(jobs, drainWithBacklog),
            drainAfterBacklogJobsPerSecond: rate(jobs, drainAfterBacklog),
            drainWithBacklogRatio: (rate(jobs, drainWithBacklog) / ((rate(jobs, drain) + rate(jobs, drainAfterBacklog)) / 2) * 1000)
                .rounded() / 1000,
            drainDependentsJobsPerSecond: rate(jobs, drainDependents),
            drainDependentsRatio: (rate(jobs, drainDependents) / rate(jobs, drain) * 1000).rounded() / 1000,
            startLatencyMs: latency)
    }

    /// N enqueues, each its own durable transaction, by a producer pinned to its connection's
    /// thread, by one that is not, and (with `busyPollURL`) by a pinned one that polls for its
    /// answers. They alternate in fifths so that the machine's drift during the phase falls on
    /// all alike. The pinned ones are also timed by the CPU the whole process used meanwhile (every
    /// thread: the event loops, the pool), which is what polling costs.
    func enqueueOneAtATime(on db: ReconnectingConnection) async throws -> (pinned: Timed, unpinned: Duration, busyPolling: Timed?) {
        var pinned = Timed(), unpinned = Duration.zero
        var busyPolling: Timed? = busyPollURL == nil ? nil : Timed()
        let polling = busyPollURL.map { ReconnectingConnection(url: $0, logger: logger) }
        let outcome = await Result {
            // Connected (and the statement prepared) before the clock starts.
            if let polling { try await enqueueSingles(1, on: polling) }
            let rounds = 5
            for round in 0..<rounds {
                let count = jobs / rounds + (round < jobs % rounds ? 1 : 0)
                unpinned += try await timed { try await enqueueSingles(count, on: db) }
                pinned += try await db.pinned { try await timedWithCPU { try await enqueueSingles(count, on: db) } }
                if let polling {
                    busyPolling? += try await polling.pinned { try await timedWithCPU { try await enqueueSingles(count, on: polling) } }
                }
            }
        }
        await polling?.close()
        try outcome.get()
        return (pinned, unpinned, busyPolling)
    }

    /// N jobs in batches of 1,000 by a producer that is not pinned and N by one that is, in
    /// alternating fifths as for single enqueues. Pinned batches came out about 30% faster once
    /// tasks ran on the event loops (b290032).
    func enqueueInBatches(on db: ReconnectingConnection) async throws -> (unpinned: Duration, pinned: Duration) {
        var unpinned = Duration.zero, pinned = Duration.zero
        let rounds = 5
        for round in 0..<rounds {
            let count = jobs / rounds + (round < jobs % rounds ? 1 : 0)
            unpinned += try await timed { try await enqueueBatches(queue: "bench", count: count, on: db) }
            pinned += try await db.pinned { try await timed { try await enqueueBatches(queue: "bench", count: count, on: db) } }
        }
        return (unpinned, pinned)
    }

    /// N single enqueues from several producers at once, each pinned to a connection of its own:
    /// what many clients enqueueing at the same time (API processes, app servers) get together.
    func enqueueConcurrently() async throws -> Duration {
        let connections = (0..<producers).map { _ in ReconnectingConnection(url: url, logger: logger) }
        let outcome = await Result {
            // Connected (and the statements prepared) before the clock starts.
            for connection in connections { try await enqueueSingles(1, on: connection) }
            return try await timed {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (index, connection) in connections.enumerated() {
                        let count = jobs / producers + (index < jobs % producers ? 1 : 0)
                        group.addTask { try await connection.pinned { try await enqueueSingles(count, on: connection) } }
                    }
                    try await group.waitForAll()
                }
            }
        }
        for connection in connections { await connection.close() }
        return try outcome.get()
    }

    /// `count` no-op jobs, one enqueue (one transaction) each.
    func enqueueSingles(_ count: Int, on db: ReconnectingConnection) async throws {
        for _ in 0..<count { _ = try await store.enqueue(NewJob(queue: "single", kind: "bench.noop"), on: db) }
    }

    func migrate() async throws {
        let connection = ReconnectingConnection(url: url, logger: logger)
        try await Migrator(database: connection, logger: logger).migrate([(QueueSchema.component, QueueSchema.migrations)])
        await connection.close()
    }

    func enqueueBatches(queue: String, count: Int? = nil, on db: ReconnectingConnection) async throws {
        var left = count ?? jobs
        while left > 0 {
            let count = min(1000, left)
            _ = try await store.enqueueMany(Array(repeating: NewJob(queue: queue, kind: "bench.noop"), count: count), on: db)
            left -= count
        }
    }

    /// N jobs as parent and child pairs, in batches of 500 parents and then their 500 children.
    func enqueuePairs(queue: String, on db: ReconnectingConnection) async throws {
        var left = jobs
        while left > 0 {
            let count = min(500, (left + 1) / 2)
            let parents = try await store.enqueueMany(Array(repeating: NewJob(queue: queue, kind: "bench.noop"), count: count), on: db)
            let children = parents.prefix(min(count, left - count)).map { NewJob(queue: queue, kind: "bench.noop", dependsOn: [$0.id]) }
            if !children.isEmpty { _ = try await store.enqueueMany(Array(children), on: db) }
            left -= parents.count + children.count
        }
    }

    func reset(_ db: ReconnectingConnection) async throws {
        _ = try await db.run("TRUNCATE loco_jobs CASCADE", logger: logger)
        try await checkpoint(db)
    }

    /// Before a drain: fresh statistics, and a checkpoint (see `checkpoint`).
    func vacuum(_ db: ReconnectingConnection) async throws {
        _ = try await db.run("VACUUM ANALYZE loco_jobs", logger: logger)
        try await checkpoint(db)
    }

    /// Starts a phase with no WAL owed by the one before: otherwise the checkpoint that a phase's
    /// writes (the million-row backlog, pgbench's load) make PostgreSQL start once `max_wal_size`
    /// is reached lands in whichever phase comes next. One landing in the backlog drain was seen
    /// to cut it to 0.68× the plain drain; every drain gets the same checkpoint first.
    func checkpoint(_ db: ReconnectingConnection) async throws {
        _ = try await db.run("CHECKPOINT", logger: logger)
    }

    func worker(_ queue: String, handlers: JobHandlers) throws -> QueueWorker {
        var configuration = WorkerConfiguration(queues: [.init(name: queue, concurrency: concurrency)])
        configuration.runMaintenance = false
        return try QueueWorker(databaseURL: url, handlers: handlers, configuration: configuration, logger: logger)
    }

    /// Time for one worker process to complete every available job of `queue`.
    func drainQueue(_ queue: String, on db: ReconnectingConnection) async throws -> Duration {
        let ran = Atomic<Int>(0)
        var handlers = JobHandlers()
        handlers.register(kind: "bench.noop") { _, _ in ran.add(1, ordering: .relaxed) }
        let worker = try worker(queue, handlers: handlers)
        let began = ContinuousClock.now
        let running = Task { try await worker.run() }
        // Until every job has run, count in the process rather than ask the database: each probe
        // below took 0.73-0.88 ms of server time in drains (pg_stat_statements; claimed jobs
        // leave dead entries in the indexes it reads), about 8% of one core at a hundred a second.
        var asked = ContinuousClock.now
        while ran.load(ordering: .relaxed) < jobs {
            try await Task.sleep(for: .milliseconds(2))
            // A job that never runs to the end (a failure) would keep the count short: ask the
            // database once a second too.
            if ContinuousClock.now - asked > .seconds(1) {
                asked = .now
                if try await !pending(queue, on: db) { break }
            }
        }
        // Only the last outcomes are still being written by now.
        while try await pending(queue, on: db) {
            try await Task.sleep(for: .milliseconds(10))
        }
        let elapsed = ContinuousClock.now - began
        worker.stop()
        try await running.value
        return elapsed
    }

    /// Whether `queue` still has jobs available or running.
    func pending(_ queue: String, on db: ReconnectingConnection) async throws -> Bool {
        let rows = try await db.run("""
            SELECT EXISTS (SELECT 1 FROM loco_jobs WHERE state = 'available' AND queue = \(queue))
                OR EXISTS (SELECT 1 FROM loco_jobs WHERE state = 'running' AND queue = \(queue))
            """, logger: logger)
        var pending = true
        for try await value in rows.decode(Bool.self) { pending = value }
        return pending
    }

    /// Enqueue-to-handler-start delay at a steady rate, one job per enqueue, worker idle and listening.
    func startLatency(rate: Int, seconds: Int, on db: ReconnectingConnection) async throws -> QueueBenchResult.Latency {
        let total = rate * seconds
        // Wall-clock seconds per job: when its enqueue was called, when it returned, when its handler started.
        let started = Mutex<[Int: Double]>([:])
        var sent = [Double](repeating: 0, count: total), returned = [Double](repeating: 0, count: total)
        var handlers = JobHandlers()
        handlers.register(kind: "bench.latency") { args, _ in
            let now = Date().timeIntervalSince1970
            if let data = args.data(using: .utf8), let object = try? JSONSerialization.jsonObject(with: data) as? [String: Int],
               let index = object["i"] {
                started.withLock { $0[index] = now }
            }
        }
        let worker = try worker("latency", handlers: handlers)
        let running = Task { try await worker.run() }
        await worker.waitUntilListening()
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        for index in 0..<total {
            let due = start + .nanoseconds(Int64(index) * 1_000_000_000 / Int64(rate))
            if due > ContinuousClock.now { try await Task.sleep(until: due) }
            sent[index] = Date().timeIntervalSince1970
            _ = try await store.enqueue(NewJob(queue: "latency", kind: "bench.latency", args: #"{"i": \#(index)}"#), on: db)
            returned[index] = Date().timeIntervalSince1970
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while started.withLock({ $0.count }) < total && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        worker.stop()
        try await running.value
        let samples = started.withLock { $0 }.map { index, at in
            (total: (at - sent[index]) * 1000, enqueue: (returned[index] - sent[index]) * 1000, after: (at - returned[index]) * 1000)
        }
        let totals = QueueBenchResult.Percentiles(samples.map(\.total))
        let slowest = samples.sorted { $0.total > $1.total }.prefix(max(1, samples.count / 100))
        let shares = slowest.map { $0.enqueue / $0.total }.sorted()
        return .init(ratePerSecond: rate, samples: samples.count, p50: totals.p50, p99: totals.p99, max: totals.max,
                     enqueue: .init(samples.map(\.enqueue)), afterEnqueue: .init(samples.map(\.after)),
                     slowestEnqueueShare: shares.isEmpty ? .nan : (shares[shares.count / 2] * 1000).rounded() / 1000)
    }

    func timed(_ body: () async throws -> Void) async throws -> Duration {
        let began = ContinuousClock.now
        try await body()
        return ContinuousClock.now - began
    }

    /// Wall time, and the CPU time of the whole process.
    struct Timed {
        var wall = Duration.zero
        var cpu = Duration.zero

        static func += (total: inout Timed, more: Timed) {
            total.wall += more.wall
            total.cpu += more.cpu
        }
    }

    func timedWithCPU(_ body: () async throws -> Void) async throws -> Timed {
        func processCPU() -> Duration {
            var now = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now)
            return .seconds(now.tv_sec) + .nanoseconds(now.tv_nsec)
        }
        let cpu = processCPU()
        let wall = try await timed(body)
        return Timed(wall: wall, cpu: processCPU() - cpu)
    }

    func rate(_ count: Int, _ duration: Duration) -> Double {
        (Double(count) / duration.seconds).rounded()
    }
}
