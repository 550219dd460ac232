import ArgumentParser
import LocoShared
import Foundation
import LocoQueue
import PostgresNIO

struct QueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "Inspect and operate the job queue.",
        subcommands: [Stats.self, Workers.self, List.self, Show.self, Retry.self, Cancel.self, Discard.self, Pause.self, Resume.self, Scale.self, Limit.self, Enqueue.self]
    )

    struct Stats: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Depth by queue and state, oldest available job, failures in the last hour.")
        @OptionGroup var database: DatabaseOptions
        @Option var output: OutputFormat = .text
        @Flag(help: "Only the live states (blocked, scheduled, available, running): read through their indexes, fast however many finished jobs the table keeps.")
        var live = false

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { client, _, logger in
                    let stats = try await JobStore(logger: logger).stats(on: client, includingFinished: !live)
                    if output == .json { return try printJSON(stats) }
                    let states = (live ? JobState.live : JobState.allCases).map(\.rawValue)
                    let header = ["queue"] + states + ["oldest_available", "failed_1h"]
                    var rows = [header]
                    for queue in stats.queues {
                        let notes = (queue.pausedAt == nil ? "" : " (paused)") + (queue.globalLimit.map { " (limit \($0))" } ?? "")
                        rows.append([queue.name + notes] + states.map { String(queue.depth[$0] ?? 0) }
                            + [queue.oldestAvailableSeconds.map { String(format: "%.1fs", $0) } ?? "-", String(queue.failedLastHour)])
                    }
                    if stats.queues.isEmpty { print("no jobs") } else { printTable(rows) }
                }
            }
        }
    }

    struct Workers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Worker processes: which are alive (their session holds the presence lock, or a poll-only one touched its row within its grace) and how many jobs each runs.")
        @OptionGroup var database: DatabaseOptions
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { client, _, logger in
                    let workers = try await JobStore(logger: logger).workers(on: client)
                    if output == .json { return try printJSON(workers) }
                    guard !workers.isEmpty else { return print("no workers have run here yet") }
                    let time = ISO8601DateFormatter()
                    printTable([["worker", "state", "queues", "running", "started", "connected"]] + workers.map {
                        [$0.id, $0.present ? "alive" : "gone", $0.queues.isEmpty ? "-" : $0.queues.joined(separator: ","),
                         String($0.runningJobs), time.string(from: $0.startedAt),
                         $0.lastSeenAt.map { "poll-only, seen \(time.string(from: $0))" } ?? time.string(from: $0.connectedAt)]
                    })
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Jobs, newest first.")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "Only jobs of this queue.") var queue: String?
        @Option(help: "Only jobs in this state (blocked, scheduled, available, running, completed, failed, cancelled).") var state: String?
        @Option(help: "Only jobs of this kind.") var kind: String?
        @Option(help: #"Only jobs whose args contain this JSON object, e.g. '{"deployment_id": 42}'."#) var args: String?
        @Option(help: "Only jobs older than this id: the next page starts below the last id shown.") var before: Int64?
        @Option(help: "How many jobs to show.") var limit: Int = 50
        @Option(help: "text or json.") var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                try checkedOption(limit, "--limit", in: 1...10_000, example: "50")
                if let before, before < 1 {
                    throw UsageError(message: "--before must be a job id, 1 or more (got \(before))", hint: "Pass the last id the page before showed, e.g. --before 1200.")
                }
                var jobState: JobState?
                if let state {
                    guard let parsed = JobState(rawValue: state) else {
                        throw UsageError(message: "unknown state '\(state)'", hint: "Use one of: \(JobState.allCases.map(\.rawValue).joined(separator: ", ")).")
                    }
                    jobState = parsed
                }
                try JobSelection(queue: queue, kind: kind, args: args, states: []).check()
                try await database.withClient { client, _, logger in
                    let jobs = try await JobStore(logger: logger).list(queue: queue, state: jobState, kind: kind, args: args, before: before, limit: limit,
                                                                        withPeriodKeys: true, on: client)
                    if output == .json { return try printJSON(jobs) }
                    // The unique key only when a job on the page has one: most have none.
                    let keyed = jobs.contains { $0.uniqueKey != nil }
                    var header = ["id", "queue", "kind", "state", "attempt", "created"]
                    if keyed { header.append("unique key") }
                    var rows = [header + ["last error"]]
                    for job in jobs {
                        var row: [String] = [String(job.id), job.queue, job.kind, job.state.rawValue, "\(job.attempt)/\(job.maxAttempts)",
                                             job.createdAt.formatted(.iso8601)]
                        if keyed { row.append(job.uniqueKey.map { String($0.prefix(40)) } ?? "") }
                        let lastError: String = job.errors.last.map { String("\($0.code): \($0.message)".prefix(60)) } ?? ""
                        rows.append(row + [lastError])
                    }
                    if jobs.isEmpty { print("no jobs match") } else { printTable(rows) }
                    if jobs.count == limit, let last = jobs.last {
                        print("older jobs may match: add --before \(last.id)")
                    }
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One job with its whole error history.")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The job's id (as 'locod queue list' shows it).") var id: Int64
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { client, _, logger in
                    guard let job = try await JobStore(logger: logger).job(id: id, withPeriodKey: true, on: client) else { throw QueueError.jobNotFound(id) }
                    if output == .json { return try printJSON(job) }
                    print("job \(job.id)  \(job.kind)  on queue \(job.queue)")
                    print("  state       \(job.state.rawValue)\(job.cancelRequested && job.state == .running ? " (cancel requested)" : "")")
                    print("  attempt     \(job.attempt) of \(job.maxAttempts)")
                    print("  priority    \(job.priority)")
                    print("  created     \(job.createdAt.formatted(.iso8601))")
                    print("  run at      \(job.runAt.formatted(.iso8601))")
                    if let at = job.attemptedAt { print("  attempted   \(at.formatted(.iso8601))") }
                    if let at = job.finalizedAt { print("  finished    \(at.formatted(.iso8601))") }
                    if let by = job.lockedBy { print("  worker      \(by)") }
                    if let key = job.uniqueKey {
                        print("  unique key  \(key)\(job.uniqueHeldUntil.map { " (held until \($0.formatted(.iso8601)), or while the job is live)" } ?? "")")
                    }
                    if !job.dependsOn.isEmpty { print("  depends on  \(job.dependsOn.map(String.init).joined(separator: ", ")) (\(job.pendingDependencies) pending)") }
                    print("  args        \(job.args)")
                    if !job.errors.isEmpty {
                        print("  errors:")
                        for error in job.errors {
                            print("    #\(error.attempt) \(error.at.formatted(.iso8601)) [\(error.errorClass.rawValue)] \(error.code): \(error.message)\(error.worker.map { " (worker \($0))" } ?? "")")
                            if let detail = error.detail { print("       \(detail.prefix(300))") }
                        }
                    }
                }
            }
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a finished or scheduled job again now, or every selected one.",
            discussion: "locod queue retry 42 · locod queue retry --queue push --state failed (the default state) [--kind K]")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "One job's id (or select many with --queue, --kind and --state).") var id: Int64?
        @OptionGroup var select: SelectionOptions
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await oneOrMany(database, output: output, id: id, select: select, verb: "retry", done: "retried",
                                allowed: JobState.retryable, defaults: [.failed],
                                one: { try await $0.retry(id: $2, on: $1) }, many: { try await $0.retry(matching: $2, on: $1) })
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel a queued job now, or ask a running one to stop; or every selected one.",
            discussion: "locod queue cancel 42 · locod queue cancel --queue build [--kind K] [--state available] (default: every live state)")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "One job's id (or select many with --queue, --kind and --state).") var id: Int64?
        @OptionGroup var select: SelectionOptions
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await oneOrMany(database, output: output, id: id, select: select, verb: "cancel", done: "cancelled",
                                allowed: JobState.live, defaults: JobState.live, note: "queued ones at once; running ones were asked to stop",
                                one: { [output] store, client, id in
                                    if try await store.cancel(id: id, on: client) == .running, output == .text {
                                        print("job \(id) is running: its worker was asked to stop it")
                                    }
                                },
                                many: { try await $0.cancel(matching: $2, on: $1) })
        }
    }

    struct Discard: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fail a queued job for good without running it, or every selected one.",
            discussion: "locod queue discard 42 · locod queue discard --queue build [--kind K] [--state scheduled] (default: blocked, scheduled, available)")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "One job's id (or select many with --queue, --kind and --state).") var id: Int64?
        @OptionGroup var select: SelectionOptions
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await oneOrMany(database, output: output, id: id, select: select, verb: "discard", done: "discarded",
                                allowed: JobState.queued, defaults: JobState.queued,
                                one: { try await $0.discard(id: $2, on: $1) }, many: { try await $0.discard(matching: $2, on: $1) })
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop workers everywhere from starting jobs of a queue.",
            discussion: "Jobs already running finish; new jobs still enqueue and wait. Undo with 'locod queue resume QUEUE'.")
        @OptionGroup var database: DatabaseOptions
        @Argument var queue: String
        @Option(help: "Who paused it and why: shown to deployments that wait, in workers' logs and in this command's JSON.") var by: String?
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { client, _, logger in
                    let store = JobStore(logger: logger)
                    let pause = try await store.pause(queue: queue, by: by, on: client)
                    await noteIfUnused(queue, store: store, client: client, undo: "locod queue resume \(queue)")
                    if output == .json { return try printJSON(pause) }
                    if pause.wasPaused {
                        print("queue \(queue) was already paused (since \(pause.pausedAt.formatted(.iso8601)))")
                    } else {
                        print("queue \(queue) paused: workers finish what they run and start nothing more; new jobs wait. Resume: locod queue resume \(queue)")
                    }
                }
            }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let workers start jobs of a paused queue again (idle ones wake at once).")
        @OptionGroup var database: DatabaseOptions
        @Argument var queue: String
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                try await database.withClient { client, _, logger in
                    let resumed = try await JobStore(logger: logger).resume(queue: queue, on: client)
                    struct Outcome: Encodable { let queue: String; let resumed: Bool }
                    if output == .json { return try printJSON(Outcome(queue: queue, resumed: resumed)) }
                    print(resumed ? "queue \(queue) resumed" : "queue \(queue) was not paused; nothing to do")
                }
            }
        }
    }

    struct Scale: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change how many jobs of a queue each worker runs at once, without a restart; without arguments, list the scales set.",
            discussion: """
                'locod queue scale build 2' makes every worker that works build run at most 2 of its jobs at once (running ones \
                over it finish; none starts until a worker is under it); --worker ID scales one worker only, and beats the scale \
                for every worker there. Workers apply it at once (within 5 s without notifications). \
                'locod queue scale build --reset' returns them to their own --concurrency.
                """)
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The queue; omit to list the scales set.") var queue: String?
        @Argument(help: "How many of its jobs each worker runs at once (1 to 10000).") var concurrency: Int?
        @Option(help: "Scale this worker only (its id, as 'locod queue workers' lists it).") var worker: String?
        @Option(help: "Who scaled it and why: shown in workers' logs, the listing and this command's JSON.") var by: String?
        @Flag(help: "Remove the scale: workers go back to their own --concurrency.") var reset = false
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                guard let queue else {
                    guard concurrency == nil, worker == nil, by == nil, !reset else {
                        throw UsageError(message: "no queue given", hint: "Pass the queue first, e.g. 'locod queue scale build 2'.")
                    }
                    return try await list()
                }
                let concurrency = try checkedSetting(concurrency, named: "concurrency", of: queue, in: QueueScale.range, command: "scale", undoFlag: "--reset", undoing: reset)
                try await database.withClient { client, _, logger in
                    let store = JobStore(logger: logger)
                    let target = worker.map { "worker \($0)" } ?? "every worker"
                    if reset {
                        let removed = try await store.resetScale(queue: queue, worker: worker, on: client)
                        struct Outcome: Encodable { let queue: String; let worker: String?; let reset: Bool }
                        if output == .json { return try printJSON(Outcome(queue: queue, worker: worker, reset: removed)) }
                        let back = worker == nil ? "every worker is back to its own --concurrency (or its own scale)"
                            : "it is back to the scale for every worker, if any, else its own --concurrency"
                        return print(removed ? "queue \(queue) on \(target): \(back)" : "queue \(queue) had no scale on \(target); nothing to do")
                    }
                    let scale = try await store.scale(queue: queue, to: concurrency, worker: worker, by: by, on: client)
                    await noteIfUnused(queue, store: store, client: client, undo: "locod queue scale \(queue) --reset")
                    if output == .json { return try printJSON(scale) }
                    print("queue \(queue) scaled to \(scale.concurrency) on \(target): applied at once, running jobs over it finish. Undo: locod queue scale \(queue) --reset\(worker.map { " --worker \($0)" } ?? "")")
                }
            }
        }

        func list() async throws {
            try await database.withClient { client, _, logger in
                let scales = try await JobStore(logger: logger).queueScales(on: client)
                if output == .json { return try printJSON(scales) }
                guard !scales.isEmpty else { return print("no queue is scaled: every worker runs its own --concurrency") }
                printTable([["queue", "worker", "concurrency", "by", "since"]] + scales.map {
                    [$0.queue, $0.worker ?? "(every worker)", String($0.concurrency), $0.changedBy ?? "-", $0.updatedAt.formatted(.iso8601)]
                })
            }
        }
    }

    struct Limit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Limit how many jobs of a queue run at once across all workers; without arguments, list the limits.",
            discussion: """
                'locod queue limit build 2' lets at most 2 build jobs run at once, however many workers work the queue and \
                whatever their --concurrency (for work that shares one resource: a disk, a registry). Workers apply it at once \
                (within 5 s without notifications); running jobs over it finish. 'locod queue limit build --remove' lifts it.
                """)
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The queue; omit to list the limits.") var queue: String?
        @Argument(help: "How many of its jobs may run at once across all workers (1 to 100000).") var limit: Int?
        @Option(help: "Who set it and why: shown in workers' logs, the listing and this command's JSON.") var by: String?
        @Flag(help: "Lift the limit.") var remove = false
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                guard let queue else {
                    guard limit == nil, by == nil, !remove else {
                        throw UsageError(message: "no queue given", hint: "Pass the queue first, e.g. 'locod queue limit build 2'.")
                    }
                    return try await list()
                }
                let limit = try checkedSetting(limit, named: "limit", of: queue, in: QueueLimit.range, command: "limit", undoFlag: "--remove", undoing: remove)
                try await database.withClient { client, _, logger in
                    let store = JobStore(logger: logger)
                    if remove {
                        let removed = try await store.removeLimit(queue: queue, on: client)
                        struct Outcome: Encodable { let queue: String; let removed: Bool }
                        if output == .json { return try printJSON(Outcome(queue: queue, removed: removed)) }
                        return print(removed ? "queue \(queue): no limit across workers any more" : "queue \(queue) had no limit; nothing to do")
                    }
                    let set = try await store.limit(queue: queue, to: limit, by: by, on: client)
                    await noteIfUnused(queue, store: store, client: client, undo: "locod queue limit \(queue) --remove")
                    if output == .json { return try printJSON(set) }
                    print("queue \(queue): at most \(set.limit) of its jobs run at once across all workers, from now on. Lift: locod queue limit \(queue) --remove")
                }
            }
        }

        func list() async throws {
            try await database.withClient { client, _, logger in
                let limits = try await JobStore(logger: logger).queueLimits(on: client)
                if output == .json { return try printJSON(limits) }
                guard !limits.isEmpty else { return print("no queue is limited across workers") }
                printTable([["queue", "limit", "by", "since"]] + limits.map {
                    [$0.queue, String($0.limit), $0.changedBy ?? "-", $0.updatedAt.formatted(.iso8601)]
                })
            }
        }
    }

    struct Enqueue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enqueue jobs by hand (operators, the demo, scripts).")
        @OptionGroup var database: DatabaseOptions
        @Option(help: "The queue to put the jobs in.") var queue: String
        @Option(help: "The job kind (a worker must have a handler for it).") var kind: String
        @Option(help: "JSON object.") var args: String = "{}"
        @Option(help: "Lower runs first.") var priority: Int = 0
        @Option(help: "Attempts before the job fails for good (1-1000).") var maxAttempts: Int = 10
        @Option(help: "Delay before the job may run, in seconds.") var delay: Double = 0
        @Option(help: "At most one live job (not completed, failed or cancelled) has this key.") var uniqueKey: String?
        @Option(help: "With --unique-key: hold the key this many seconds after enqueue, even once the job completed (at most once per period).")
        var uniqueFor: Double?
        @Option(name: .customLong("depends-on"), help: "A job id this job waits for (repeatable).") var dependsOn: [Int64] = []
        @Option(help: "How many identical jobs (enqueued in one round trip).") var count: Int = 1
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                let wait = try durationOption(seconds: delay, option: "--delay", atLeast: 0, example: "60")
                let period = try uniqueFor.map { try durationOption(seconds: $0, option: "--unique-for", atLeast: 1, example: "3600") }
                try checkedOption(count, "--count", in: 1...100_000, example: "100")
                try await database.withClient { client, _, logger in
                    let runAt = wait > .zero ? Date().addingTimeInterval(wait.seconds) : nil
                    let job = NewJob(queue: queue, kind: kind, args: args, priority: priority, runAt: runAt, maxAttempts: maxAttempts,
                                     uniqueKey: uniqueKey, uniqueFor: period, dependsOn: dependsOn)
                    let results = try await JobStore(logger: logger).enqueueMany(Array(repeating: job, count: count), on: client)
                    if output == .json {
                        return try printJSON(results.map { ["id": "\($0.id)", "state": $0.state.rawValue, "duplicate": "\($0.duplicate)"] })
                    }
                    for result in results {
                        print(result.duplicate ? "job \(result.id) already holds that unique key (\(result.state.rawValue))" : "enqueued job \(result.id) (\(result.state.rawValue))")
                    }
                }
            }
        }
    }
}

/// What retry, cancel and discard share: one job named by id, or every job a selection picks
/// (and a usage error for both or neither).
private func oneOrMany(_ database: DatabaseOptions, output: OutputFormat, id: Int64?, select: SelectionOptions,
                       verb: String, done: String, allowed: [JobState], defaults: [JobState], note: String? = nil,
                       one: @escaping (JobStore, ConnectionPool, Int64) async throws -> Void,
                       many: @escaping (JobStore, ConnectionPool, JobSelection) async throws -> Int) async throws {
    try await reportingErrors {
        guard let id else {
            let selection = try select.selection(verb: verb, allowed: allowed, defaults: defaults)
            try selection.check()
            return try await bulk(database, output: output, selection: selection, verb: done, note: note) { try await many($0, $1, selection) }
        }
        try select.checkUnused(verb: verb)
        try await operate(database, output: output, id: id, verb: done) { try await one($0, $1, id) }
    }
}

private func operate(_ database: DatabaseOptions, output: OutputFormat, id: Int64, verb: String,
                     _ action: @escaping (JobStore, ConnectionPool) async throws -> Void) async throws {
    try await database.withClient { client, _, logger in
        let store = JobStore(logger: logger)
        try await action(store, client)
        let job = try await store.job(id: id, on: client)
        if output == .json { return try printJSON(job) }
        print("job \(id) \(verb); now \(job?.state.rawValue ?? "gone")")
    }
}

/// A bulk action over the selected jobs; prints how many it changed.
private func bulk(_ database: DatabaseOptions, output: OutputFormat, selection: JobSelection, verb: String, note: String? = nil,
                  _ action: @escaping (JobStore, ConnectionPool) async throws -> Int) async throws {
    try await database.withClient { client, _, logger in
        let count = try await action(JobStore(logger: logger), client)
        if output == .json { return try printJSON([verb: count]) }
        var scope = ["state \(selection.states.map(\.rawValue).joined(separator: "|"))"]
        if let queue = selection.queue { scope.insert("queue \(queue)", at: 0) }
        if let kind = selection.kind { scope.insert("kind \(kind)", at: scope.count - 1) }
        if let args = selection.args { scope.insert("args containing \(args)", at: scope.count - 1) }
        let noun = count == 1 ? "job" : "jobs"
        print("\(verb) \(count) \(noun) (\(scope.joined(separator: ", ")))" + (count > 0 ? note.map { ": \($0)" } ?? "" : ""))
    }
}

/// The number `locod queue scale|limit QUEUE N` sets, checked against `range`; 0 when the
/// command's undo flag is given (`undoing`), which takes none.
func checkedSetting(_ value: Int?, named name: String, of queue: String, in range: ClosedRange<Int>,
                    command: String, undoFlag: String, undoing: Bool) throws -> Int {
    if undoing {
        guard value == nil else {
            throw UsageError(message: "\(undoFlag) takes no \(name)", hint: "Pass either a \(name) ('locod queue \(command) \(queue) 2') or \(undoFlag).")
        }
        return 0
    }
    guard let value else {
        throw UsageError(message: "no \(name) given for queue \(queue)", hint: "Pass one, e.g. 'locod queue \(command) \(queue) 2', or \(undoFlag).")
    }
    guard range.contains(value) else {
        throw UsageError(message: "the \(name) of queue \(queue) must be from \(range.lowerBound) to \(range.upperBound) (got \(value))",
                         hint: "Pass e.g. 'locod queue \(command) \(queue) 2'; to stop a queue, 'locod queue pause \(queue)'.")
    }
    return value
}

/// Queues need no declaring, so a misspelt name pauses, scales or limits a queue nobody uses:
/// says so, with the command that undoes it. Only a note: the change is made by then, so a
/// failed look (a database not yet migrated to the presence tables) says nothing.
func noteIfUnused(_ queue: String, store: JobStore, client: some QueryRunner, undo: String) async {
    guard let known = try? await store.isKnown(queue: queue, on: client), !known else { return }
    StandardStreams.write("""
        Note: no worker listed here works queue '\(queue)' and no job waits in it; \
        if the name is misspelt, undo with '\(undo)' ('locod queue workers' lists the queues worked).\n
        """, to: STDERR_FILENO)
}

/// `--queue`, `--kind`, `--args` and `--state`: the jobs a bulk retry, cancel or discard applies to.
struct SelectionOptions: ParsableArguments {
    @Option(help: "Every selected job of this queue (instead of one ID).") var queue: String?
    @Option(help: "Every selected job of this kind (instead of one ID).") var kind: String?
    @Option(help: #"Every selected job whose args contain this JSON object, e.g. '{"deployment_id": 42}' (instead of one ID)."#) var args: String?
    @Option(help: "Only jobs in this state (repeatable; instead of one ID).") var state: [String] = []

    var selecting: Bool { queue != nil || kind != nil || args != nil || !state.isEmpty }

    /// With a job id, the selection options must be left out.
    func checkUnused(verb: String) throws {
        if selecting {
            throw UsageError(message: "give a job id or --queue/--kind/--args/--state, not both", hint: "locod queue \(verb) 42, or locod queue \(verb) --queue build")
        }
    }

    /// The jobs selected; refuses no selection at all, and states the action does not apply to.
    func selection(verb: String, allowed: [JobState], defaults: [JobState]) throws -> JobSelection {
        guard selecting else {
            throw UsageError(message: "no job given", hint: "Name one (locod queue \(verb) 42) or select many (locod queue \(verb) --queue build --state \(defaults[0].rawValue)).")
        }
        let states = try state.map { text -> JobState in
            guard let parsed = JobState(rawValue: text), allowed.contains(parsed) else {
                throw UsageError(message: "cannot \(verb) jobs in state '\(text)'", hint: "Use one of: \(allowed.map(\.rawValue).joined(separator: ", ")).")
            }
            return parsed
        }
        return JobSelection(queue: queue, kind: kind, args: args, states: states.isEmpty ? defaults : states)
    }
}

func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    var widths = first.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    for row in rows {
        print(row.enumerated().map { i, cell in cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
    }
}

