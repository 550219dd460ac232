import Foundation

/// A job enqueued on a schedule, declared in code. Each slot is enqueued exactly once, with
/// `unique_key = "cron:<name>:<slot>"`, however many schedulers run it.
public struct PeriodicJob: Sendable {
    public let name: String
    public let schedule: CronSchedule
    public let queue: String
    public let kind: String
    public let args: String
    public let maxAttempts: Int

    public init(name: String, schedule: CronSchedule, queue: String, kind: String, args: String = "{}", maxAttempts: Int = 3) {
        self.name = name
        self.schedule = schedule
        self.queue = queue
        self.kind = kind
        self.args = args
        self.maxAttempts = maxAttempts
    }

    func job(forSlot slot: Double) -> NewJob {
        NewJob(queue: queue, kind: kind, args: args, maxAttempts: maxAttempts, uniqueKey: "cron:\(name):\(Int64(slot))")
    }
}

extension PeriodicJob {
    /// The same job on another schedule.
    public func with(schedule: CronSchedule) -> PeriodicJob {
        PeriodicJob(name: name, schedule: schedule, queue: queue, kind: kind, args: args, maxAttempts: maxAttempts)
    }

    /// The job as an operator's setting has it: on the schedule set for it, if any. Throws when
    /// the stored schedule no longer reads (a newer Loco wrote it, or someone by hand).
    public func applying(_ setting: CronSetting?) throws(QueueError) -> PeriodicJob {
        guard let expression = setting?.schedule else { return self }
        return with(schedule: try CronSchedule(expression))
    }
}

/// What an operator changed of a periodic job at run time (`locod cron set|reset|pause|resume`).
public struct CronSetting: Sendable, Equatable {
    public let name: String
    /// The schedule set over the one declared in code; nil: the declared one.
    public let schedule: String?
    /// Since when no scheduler, nor `locod cron NAME`, enqueues it; nil: it runs.
    public let pausedAt: Date?
    /// Who made the last change, and why: free text (`--by "ann: registry down"`).
    public let changedBy: String?
    public let updatedAt: Date
}
