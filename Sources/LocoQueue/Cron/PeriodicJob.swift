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
