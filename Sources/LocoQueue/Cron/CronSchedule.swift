import Foundation

/// A cron expression: five fields (minute hour day-of-month month day-of-week), or six with a
/// leading seconds field, or a macro (@yearly, @monthly, @weekly, @daily, @hourly). Fields take
/// `*`, numbers, ranges `a-b`, steps `*/n` or `a-b/n`, lists `a,b`, and month and weekday
/// names. As in Vixie cron, when both day fields are restricted either may match.
///
/// `@every 15m` (units d, h, m, s, combined as in `1h30m`) runs every so long instead, its slots
/// counted from 1970-01-01 UTC, as River's `PeriodicInterval` and robfig's `@every` do.
///
/// Times are UTC unless the expression starts with `CRON_TZ=ZONE` (or `TZ=ZONE`), an IANA
/// name, as cronie and River's cron take it. Across daylight-saving changes it does what
/// cronie does: a time the clocks skip runs once, at the change; a time the clocks pass twice
/// runs once, the first time, unless the hour field is `*` (or `*/n`), whose jobs run in both.
public struct CronSchedule: Sendable, Equatable, CustomStringConvertible {
    public let expression: String
    /// The zone the fields are read in (UTC unless `CRON_TZ=`).
    public let timeZone: TimeZone
    /// Whether the fields are read in UTC (Foundation may call that zone GMT).
    public var isUTC: Bool { timeZone.identifier == "UTC" || timeZone.identifier == "GMT" }
    /// The zone's IANA name, "UTC" for UTC.
    public var timeZoneName: String { isUTC ? "UTC" : timeZone.identifier }
    let seconds: Set<Int>
    let minutes: Set<Int>
    let hours: Set<Int>
    let daysOfMonth: Set<Int>
    let months: Set<Int>
    let daysOfWeek: Set<Int>
    let dayOfMonthRestricted: Bool
    let dayOfWeekRestricted: Bool
    let hourRestricted: Bool
    /// Whether the expression has a seconds field (its slots are seconds, not minutes), or is an
    /// interval that is not whole minutes.
    public let hasSeconds: Bool
    /// The interval of `@every`, in seconds; nil for field expressions.
    public let interval: Int?

    public var description: String { expression }

    public init(_ expression: String) throws(QueueError) {
        self.expression = expression
        let macros = ["@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
                      "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"]
        var trimmed = expression.trimmingCharacters(in: .whitespaces)
        var zone = Self.utcZone
        if let prefix = ["CRON_TZ=", "TZ="].first(where: { trimmed.hasPrefix($0) }) {
            let name = String(trimmed.dropFirst(prefix.count).prefix { !$0.isWhitespace })
            guard !name.isEmpty, let named = TimeZone(identifier: name) else {
                throw .invalidCronExpression(expression: expression, reason: "time zone '\(name)' is not known (an IANA name such as Europe/Berlin, America/New_York or UTC)")
            }
            zone = named
            trimmed = trimmed.dropFirst(prefix.count + name.count).trimmingCharacters(in: .whitespaces)
        }
        timeZone = zone
        var text = macros[trimmed.lowercased()] ?? trimmed
        var every: Int?
        if text.lowercased().hasPrefix("@every") {
            guard zone == Self.utcZone else {
                throw .invalidCronExpression(expression: expression, reason: "CRON_TZ does not apply to @every: its slots count from 1970-01-01 UTC")
            }
            every = try Self.parseInterval(text.dropFirst("@every".count).trimmingCharacters(in: .whitespaces), expression: expression)
            text = "* * * * * *"
        }
        interval = every
        if text.hasPrefix("@") {
            throw .invalidCronExpression(expression: expression, reason: "unknown macro \(text)")
        }
        var fields = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard fields.count == 5 || fields.count == 6 else {
            throw .invalidCronExpression(expression: expression, reason: "it has \(fields.count) fields; it needs 5 (or 6 with seconds first)")
        }
        let secondsField = fields.count == 6
        hasSeconds = every.map { $0 % 60 != 0 } ?? secondsField
        if !secondsField { fields.insert("0", at: 0) }
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
        hourRestricted = !fields[2].hasPrefix("*")
        // '0 4 31 2 *' parses, and never fires: a job that silently never runs. (With a day of
        // the week as well, either one matching is enough, so it fires.)
        if dayOfMonthRestricted && !dayOfWeekRestricted {
            let longest = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
            let firing = self.months.contains { month in daysOfMonth.contains { $0 <= longest[month - 1] } }
            guard firing else {
                let names = self.months.sorted().map { months[$0 - 1].capitalized }.joined(separator: ", ")
                throw .invalidCronExpression(expression: expression,
                                             reason: "it never fires: \(names) \(self.months.count == 1 ? "has" : "have") no day \(daysOfMonth.sorted().map(String.init).joined(separator: " or ")); to stop a periodic job, pause it ('locod cron pause NAME')")
            }
        }
    }

    /// `1h30m`, `90s`, `2d`: whole seconds, from 1 second to 366 days.
    private static func parseInterval(_ text: String, expression: String) throws(QueueError) -> Int {
        let units = ["d": 86_400, "h": 3_600, "m": 60, "s": 1]
        var total = 0
        var digits = ""
        for character in text.lowercased() {
            if character.isASCII, character.isNumber {
                digits.append(character)
            } else if let unit = units[String(character)], let number = Int(digits), number <= 1_000_000 {
                total += number * unit
                digits = ""
            } else {
                throw .invalidCronExpression(expression: expression, reason: "@every needs an interval such as 15m, 1h30m or 90s (units d, h, m, s); '\(text)' is not one")
            }
        }
        guard digits.isEmpty, !text.isEmpty else {
            throw .invalidCronExpression(expression: expression, reason: "@every needs an interval such as 15m, 1h30m or 90s (units d, h, m, s); '\(text)' is not one")
        }
        guard (1...366 * 86_400).contains(total) else {
            throw .invalidCronExpression(expression: expression, reason: "@every \(text) is outside 1 second to 366 days")
        }
        return total
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

    private static let utcZone = TimeZone(identifier: "UTC")!
    private static let utc: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = utcZone
        return calendar
    }()

    /// The length of one slot: the interval of `@every`, a second with a seconds field, else a minute.
    public var resolution: TimeInterval { interval.map(TimeInterval.init) ?? (hasSeconds ? 1 : 60) }

    /// `date` rounded down to the schedule's resolution.
    public func slot(containing date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970 / resolution).rounded(.down) * resolution)
    }

    /// The first matching time strictly after `date`, or nil if none within about eight years.
    public func next(after date: Date) -> Date? {
        if interval != nil { return slot(containing: date).addingTimeInterval(resolution) }
        if isUTC { return nextWall(after: date) }
        // Wall-clock times are walked as if they were UTC ("floating"), then placed in the zone.
        func offset(_ instant: Date) -> TimeInterval { TimeInterval(timeZone.secondsFromGMT(for: instant)) }
        // A time of day before `date`'s may still come after it, if the clocks go back within
        // the next hours: start the walk that much earlier.
        let back = max(0, offset(date) - offset(date.addingTimeInterval(3 * 3_600)))
        var cursor = date.addingTimeInterval(offset(date) - back)
        var best: Date?
        for _ in 0..<10_000 {
            guard let wall = nextWall(after: cursor) else { break }
            if let found = best {
                // No later wall time can be placed before `found`.
                let latestOffset = [-86_400.0, 0, 86_400].map { offset(found.addingTimeInterval($0)) }.max()!
                if wall.addingTimeInterval(-latestOffset) > found { break }
            }
            for instant in instants(ofWall: wall) where instant > date && instant < (best ?? .distantFuture) {
                best = instant
            }
            cursor = wall
        }
        return best
    }

    /// Where a wall-clock time (floating) falls in the zone: once as a rule; not at all when the
    /// clocks skip it, which runs it at the change instead; twice when they pass it twice, of which
    /// a fixed hour keeps the first.
    private func instants(ofWall wall: Date) -> [Date] {
        let offsets = Set([-86_400.0, 0, 86_400].map { timeZone.secondsFromGMT(for: wall.addingTimeInterval($0)) })
        let placed = offsets.map { wall.addingTimeInterval(-TimeInterval($0)) }
            .filter { timeZone.secondsFromGMT(for: $0) == Int(wall.timeIntervalSince($0)) }
            .sorted()
        if placed.isEmpty, let lowest = offsets.min(), let highest = offsets.max() {
            // In the gap: find the change, which lies between the two readings of this wall time.
            var before = wall.addingTimeInterval(-TimeInterval(highest))
            var after = wall.addingTimeInterval(-TimeInterval(lowest))
            let offsetAfter = timeZone.secondsFromGMT(for: after)
            while after.timeIntervalSince(before) > 1 {
                let middle = Date(timeIntervalSince1970: ((before.timeIntervalSince1970 + after.timeIntervalSince1970) / 2).rounded(.down))
                if timeZone.secondsFromGMT(for: middle) == offsetAfter { after = middle } else { before = middle }
            }
            return [after]
        }
        return hourRestricted ? Array(placed.prefix(1)) : placed
    }

    /// The first matching wall-clock time strictly after `date`, both read as UTC.
    private func nextWall(after date: Date) -> Date? {
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
