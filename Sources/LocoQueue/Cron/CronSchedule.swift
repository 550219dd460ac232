import Foundation

/// A cron expression in UTC: five fields (minute hour day-of-month month day-of-week), or six
/// with a leading seconds field, or a macro (@yearly, @monthly, @weekly, @daily, @hourly).
/// Fields take `*`, numbers, ranges `a-b`, steps `*/n` or `a-b/n`, lists `a,b`, and month and
/// weekday names. As in Vixie cron, when both day fields are restricted either may match.
public struct CronSchedule: Sendable, Equatable, CustomStringConvertible {
    public let expression: String
    let seconds: Set<Int>
    let minutes: Set<Int>
    let hours: Set<Int>
    let daysOfMonth: Set<Int>
    let months: Set<Int>
    let daysOfWeek: Set<Int>
    let dayOfMonthRestricted: Bool
    let dayOfWeekRestricted: Bool
    /// Whether the expression has a seconds field (its slots are seconds, not minutes).
    public let hasSeconds: Bool

    public var description: String { expression }

    public init(_ expression: String) throws(QueueError) {
        self.expression = expression
        let macros = ["@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                      "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"]
        let trimmed = expression.trimmingCharacters(in: .whitespaces)
        let text = macros[trimmed.lowercased()] ?? trimmed
        if text.hasPrefix("@") {
            throw .invalidCronExpression(expression: expression, reason: "unknown macro \(text)")
        }
        var fields = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard fields.count == 5 || fields.count == 6 else {
            throw .invalidCronExpression(expression: expression, reason: "it has \(fields.count) fields; it needs 5 (or 6 with seconds first)")
        }
        hasSeconds = fields.count == 6
        if !hasSeconds { fields.insert("0", at: 0) }
        let months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        let weekdays = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
        seconds = try Self.parse(fields[0], name: "second", range: 0...59, expression: expression)
        minutes = try Self.parse(fields[1], name: "minute", range: 0...59, expression: expression)
        hours = try Self.parse(fields[2], name: "hour", range: 0...23, expression: expression)
        daysOfMonth = try Self.parse(fields[3], name: "day of month", range: 1...31, expression: expression)
        self.months = try Self.parse(fields[4], name: "month", range: 1...12, names: months, namesStart: 1, expression: expression)
        var dow = try Self.parse(fields[5], name: "day of week", range: 0...7, names: weekdays, namesStart: 0, expression: expression)
        if dow.contains(7) { dow.remove(7); dow.insert(0) }
        daysOfWeek = dow
        dayOfMonthRestricted = !fields[3].hasPrefix("*")
        dayOfWeekRestricted = !fields[5].hasPrefix("*")
    }

    private static func parse(_ field: String, name: String, range: ClosedRange<Int>, names: [String] = [], namesStart: Int = 0, expression: String) throws(QueueError) -> Set<Int> {
        func value(_ text: Substring) throws(QueueError) -> Int {
            if let number = Int(text) {
                guard range.contains(number) else {
                    throw .invalidCronExpression(expression: expression, reason: "\(name) \(number) is outside \(range.lowerBound)-\(range.upperBound)")
                }
                return number
            }
            if let index = names.firstIndex(of: text.lowercased()) { return index + namesStart }
            throw .invalidCronExpression(expression: expression, reason: "\(name) field has '\(text)', which is not a number")
        }
        var result = Set<Int>()
        for part in field.split(separator: ",", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2, let rangeText = pieces.first, !rangeText.isEmpty else {
                throw .invalidCronExpression(expression: expression, reason: "\(name) field has an empty or malformed part '\(part)'")
            }
            var step = 1
            if pieces.count == 2 {
                guard let parsed = Int(pieces[1]), parsed > 0 else {
                    throw .invalidCronExpression(expression: expression, reason: "\(name) step '\(pieces[1])' must be a positive number")
                }
                step = parsed
            }
            var low = range.lowerBound
            var high = range.upperBound
            if rangeText != "*" {
                let bounds = rangeText.split(separator: "-", omittingEmptySubsequences: false)
                guard bounds.count <= 2 else {
                    throw .invalidCronExpression(expression: expression, reason: "\(name) range '\(rangeText)' is malformed")
                }
                low = try value(bounds[0])
                high = bounds.count == 2 ? try value(bounds[1]) : (pieces.count == 2 ? range.upperBound : low)
                guard low <= high else {
                    throw .invalidCronExpression(expression: expression, reason: "\(name) range \(low)-\(high) runs backwards")
                }
            }
            for v in stride(from: low, through: high, by: step) { result.insert(v) }
        }
        return result
    }

    private static let utc: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()

    /// The length of one slot: a second with a seconds field, else a minute.
    public var resolution: TimeInterval { hasSeconds ? 1 : 60 }

    /// `date` rounded down to the schedule's resolution.
    public func slot(containing date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970 / resolution).rounded(.down) * resolution)
    }

    /// The first matching time strictly after `date`, or nil if none within about eight years.
    public func next(after date: Date) -> Date? {
        let calendar = Self.utc
        var t = slot(containing: date).addingTimeInterval(resolution)
        for _ in 0..<100_000 {
            let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday], from: t)
            guard let year = c.year, let month = c.month, let day = c.day, let hour = c.hour,
                  let minute = c.minute, let second = c.second, let weekday = c.weekday else { return nil }
            if !months.contains(month) {
                t = calendar.date(from: DateComponents(year: month == 12 ? year + 1 : year, month: month == 12 ? 1 : month + 1, day: 1))!
                continue
            }
            if !matchesDay(day: day, weekday: weekday - 1) {
                t = calendar.date(from: DateComponents(year: year, month: month, day: day))!.addingTimeInterval(86_400)
                continue
            }
            if !hours.contains(hour) {
                t = calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour))!.addingTimeInterval(3_600)
                continue
            }
            if !minutes.contains(minute) {
                t = calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute))!.addingTimeInterval(60)
                continue
            }
            if !seconds.contains(second) {
                t = t.addingTimeInterval(1)
                continue
            }
            return t
        }
        return nil
    }

    /// The newest matching time in `(after, now]`, or nil when none is due.
    public func latestDue(after last: Date, now: Date) -> Date? {
        var due: Date?
        var cursor = last
        for _ in 0..<10_000 {
            guard let next = next(after: cursor), next <= now else { return due }
            due = next
            cursor = next
        }
        // So many slots were missed that walking them is pointless: run the current one.
        return slot(containing: now)
    }

    private func matchesDay(day: Int, weekday: Int) -> Bool {
        switch (dayOfMonthRestricted, dayOfWeekRestricted) {
        case (true, true): daysOfMonth.contains(day) || daysOfWeek.contains(weekday)
        case (true, false): daysOfMonth.contains(day)
        case (false, true): daysOfWeek.contains(weekday)
        case (false, false): true
        }
    }
}
