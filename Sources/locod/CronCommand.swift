import ArgumentParser
import Foundation
import LocoQueue

/// `locod cron`: the periodic jobs, as every scheduler sees them, and the operator's changes.
struct Cron: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List periodic jobs, enqueue one's current slot (for system cron), or change one's schedule at run time.",
        discussion: """
            Each slot is enqueued once, however often and wherever it runs: e.g. '0 3 * * * locod cron registry-cleanup'. \
            'set', 'reset', 'pause' and 'resume' change a periodic job for every worker's scheduler at its next tick, \
            with no restart; times are UTC unless the schedule starts with CRON_TZ=ZONE.
            """,
        subcommands: [Run.self, List.self, SetSchedule.self, Reset.self, Pause.self, Resume.self],
        defaultSubcommand: Run.self
    )

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enqueue the current slot of a periodic job (for system cron); without a name, list them.",
            discussion: "A paused periodic job enqueues nothing (exit 0, with a note).")
        @OptionGroup var database: DatabaseOptions
        @Argument(help: "The periodic job's name; omit to list them.") var name: String?
        @Option var output: OutputFormat = .text

        func run() async throws {
            guard let name else { return try await List.list(database: database, output: output) }
            try await reportingErrors {
                let declared = try PeriodicJobs.named(name)
                try await database.withClient { client, _, logger in
                    let store = JobStore(logger: logger)
                    let setting = try await store.cronSettings(on: client)[name]
                    if let pausedAt = setting?.pausedAt {
                        if output == .json {
                            return try printJSON(["name": name, "slot": "", "job_id": "", "paused_at": pausedAt.formatted(.iso8601)])
                        }
                        return print("\(name) is paused (since \(pausedAt.formatted(.iso8601))\(setting?.changedBy.map { ", by \($0)" } ?? "")); nothing enqueued. Resume: locod cron resume \(name)")
                    }
                    let periodic = try declared.applying(setting)
                    let slot = periodic.schedule.slot(containing: Date())
                    let id = try await PeriodicScheduler(store: store, logger: logger).enqueue(periodic, slot: slot, database: client)
                    if output == .json {
                        return try printJSON(["name": name, "slot": slot.formatted(.iso8601), "job_id": id.map(String.init) ?? ""])
                    }
                    if let id {
                        print("enqueued job \(id) for \(name), slot \(slot.formatted(.iso8601))")
                    } else {
                        print("\(name): slot \(slot.formatted(.iso8601)) was already enqueued; nothing to do")
                    }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List periodic jobs: schedule (and whether an operator set it), queue, kind, next slot, pause.")
        @OptionGroup var database: DatabaseOptions
        @Option var output: OutputFormat = .text

        func run() async throws { try await Self.list(database: database, output: output) }

        static func list(database: DatabaseOptions, output: OutputFormat) async throws {
            try await reportingErrors {
                try await database.withClient { client, _, logger in
                    let store = JobStore(logger: logger)
                    let settings = try await store.cronSettings(on: client)
                    let slots = try await store.cronSlots(on: client)
                    let listed = PeriodicJobs.all.map { PeriodicJobView($0, setting: settings[$0.name], lastSlot: slots[$0.name]) }
                    if output == .json { return try printJSON(listed) }
                    for job in listed {
                        var line = "\(job.name)  '\(job.schedule)'  -> queue \(job.queue), kind \(job.kind); "
                        if !job.pausedAt.isEmpty {
                            line += "paused since \(job.pausedAt); resume: locod cron resume \(job.name)"
                        } else {
                            line += "next \(job.nextSpoken ?? "never")"
                        }
                        if job.schedule != job.declaredSchedule {
                            line += "; declared '\(job.declaredSchedule)'"
                        }
                        if !job.changedAt.isEmpty {
                            line += "; last changed \(job.changedAt)" + (job.changedBy.isEmpty ? "" : " by \(job.changedBy)")
                        }
                        print(line)
                    }
                }
            }
        }
    }

    struct SetSchedule: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Run a periodic job on another schedule, on every scheduler, from its next slot.",
            discussion: "e.g. locod cron set registry-cleanup 'CRON_TZ=Europe/Berlin 30 4 * * sun'. Slots the new schedule had before now are not caught up. System cron entries that run 'locod cron NAME' keep their own times.")
        @OptionGroup var database: DatabaseOptions
        @Argument var name: String
        @Argument(help: "A cron expression (5 fields, or 6 with seconds first, or @daily …), optionally starting with CRON_TZ=ZONE.") var schedule: String
        @Option(help: "Who changed it and why, shown by 'locod cron'.") var by: String?
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                let declared = try PeriodicJobs.named(name)
                let parsed = try CronSchedule(schedule)
                try await change(declared, database: database, output: output) { store, client in
                    _ = try await store.setCronSchedule(declared, to: parsed, by: by, on: client)
                    return "\(name) now runs on '\(parsed.expression)'"
                }
            }
        }
    }

    struct Reset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a periodic job on the schedule declared in code again.")
        @OptionGroup var database: DatabaseOptions
        @Argument var name: String
        @Option(help: "Who changed it and why, shown by 'locod cron'.") var by: String?
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                let declared = try PeriodicJobs.named(name)
                try await change(declared, database: database, output: output) { store, client in
                    _ = try await store.setCronSchedule(declared, to: nil, by: by, on: client)
                    return "\(name) runs on its declared '\(declared.schedule.expression)' again"
                }
            }
        }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stop every scheduler (and 'locod cron NAME') from enqueuing a periodic job.",
            discussion: "Jobs already enqueued still run. Undo with 'locod cron resume NAME', which starts from the next slot without catching up.")
        @OptionGroup var database: DatabaseOptions
        @Argument var name: String
        @Option(help: "Who paused it and why, shown by 'locod cron'.") var by: String?
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                let declared = try PeriodicJobs.named(name)
                try await change(declared, database: database, output: output) { store, client in
                    let (setting, changed) = try await store.setCronPaused(declared, true, by: by, on: client)
                    return changed ? "\(name) paused: no scheduler enqueues it until 'locod cron resume \(name)'"
                        : "\(name) was already paused (since \(setting?.pausedAt?.formatted(.iso8601) ?? "?"))"
                }
            }
        }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let schedulers enqueue a paused periodic job again, from its next slot.")
        @OptionGroup var database: DatabaseOptions
        @Argument var name: String
        @Option(help: "Who resumed it, shown by 'locod cron'.") var by: String?
        @Option var output: OutputFormat = .text

        func run() async throws {
            try await reportingErrors {
                let declared = try PeriodicJobs.named(name)
                try await change(declared, database: database, output: output) { store, client in
                    let (_, changed) = try await store.setCronPaused(declared, false, by: by, on: client)
                    return changed ? "\(name) resumed" : "\(name) was not paused; nothing to do"
                }
            }
        }
    }

    /// Applies one change and prints it with the job as the schedulers now see it.
    static func change(_ declared: PeriodicJob, database: DatabaseOptions, output: OutputFormat,
                       _ body: (JobStore, ConnectionPool) async throws -> String) async throws {
        try await database.withClient { client, _, logger in
            let store = JobStore(logger: logger)
            let said = try await body(store, client)
            let now = PeriodicJobView(declared, setting: try await store.cronSettings(on: client)[declared.name],
                                      lastSlot: try await store.cronSlots(on: client)[declared.name])
            if output == .json { return try printJSON(now) }
            print(said)
            if let next = now.nextSpoken { print("next slot: \(next)") }
        }
    }
}

/// One periodic job as the schedulers see it: every value a string, empty when none (the JSON
/// of `locod cron list` and of each change).
struct PeriodicJobView: Encodable {
    let name, schedule, declaredSchedule, timeZone, queue, kind: String
    let next, nextLocal, pausedAt, changedAt, changedBy, lastSlot: String

    init(_ declared: PeriodicJob, setting: CronSetting?, lastSlot: Date?) {
        let periodic = (try? declared.applying(setting)) ?? declared
        let schedule = periodic.schedule
        let upcoming = setting?.pausedAt == nil ? schedule.next(after: Date()) : nil
        name = declared.name
        self.schedule = schedule.expression
        declaredSchedule = declared.schedule.expression
        timeZone = schedule.timeZoneName
        queue = declared.queue
        kind = declared.kind
        next = upcoming?.formatted(.iso8601) ?? ""
        nextLocal = schedule.isUTC ? "" : upcoming?.formatted(Date.ISO8601FormatStyle(timeZone: schedule.timeZone)) ?? ""
        pausedAt = setting?.pausedAt?.formatted(.iso8601) ?? ""
        changedAt = setting?.updatedAt.formatted(.iso8601) ?? ""
        changedBy = setting?.changedBy ?? ""
        self.lastSlot = lastSlot?.formatted(.iso8601) ?? ""
    }

    /// The next slot in UTC, and in the schedule's zone when that is not UTC; nil when none.
    var nextSpoken: String? {
        next.isEmpty ? nil : next + (nextLocal.isEmpty ? "" : " (\(nextLocal) \(timeZone))")
    }

    enum CodingKeys: String, CodingKey {
        case name, schedule, queue, kind, next
        case declaredSchedule = "declared_schedule", timeZone = "time_zone", nextLocal = "next_local", pausedAt = "paused_at"
        case changedAt = "changed_at", changedBy = "changed_by", lastSlot = "last_slot"
    }
}

extension PeriodicJobs {
    static func named(_ name: String) throws(QueueError) -> PeriodicJob {
        guard let periodic = all.first(where: { $0.name == name }) else {
            throw .unknownPeriodicJob(name: name, known: all.map(\.name))
        }
        return periodic
    }
}
