import Foundation
@testable import LocoQueue
import PostgresNIO
import Testing

@Suite("Cron schedules")
struct CronScheduleTests {
    func date(_ text: String) -> Date { try! Date(text, strategy: .iso8601) }

    @Test("every 15 minutes lands on the quarter hours")
    func stepMinutes() throws {
        let schedule = try CronSchedule("*/15 * * * *")
        #expect(schedule.next(after: date("2026-11-26T10:07:30Z")) == date("2026-11-26T10:15:00Z"))
        #expect(schedule.next(after: date("2026-11-26T10:45:00Z")) == date("2026-11-26T11:00:00Z"))
    }

    @Test("daily at 03:00 rolls over months and years")
    func daily() throws {
        let schedule = try CronSchedule("0 3 * * *")
        #expect(schedule.next(after: date("2026-12-31T03:00:00Z")) == date("2027-01-01T03:00:00Z"))
        #expect(try CronSchedule("@daily").next(after: date("2026-02-28T12:00:00Z")) == date("2026-03-01T00:00:00Z"))
    }

    @Test("ranges, lists, names and Sunday as 7")
    func ranges() throws {
        let weekdays = try CronSchedule("30 9 * * mon-fri")
        // 2026-11-28 is a Saturday: the next run is Monday the 30th.
        #expect(weekdays.next(after: date("2026-11-27T10:00:00Z")) == date("2026-11-30T09:30:00Z"))
        let sunday = try CronSchedule("0 0 * * 7")
        #expect(sunday.next(after: date("2026-11-26T00:00:00Z")) == date("2026-11-29T00:00:00Z"))
        let list = try CronSchedule("0 8,20 1 jan,jul *")
        #expect(list.next(after: date("2026-01-01T09:00:00Z")) == date("2026-01-01T20:00:00Z"))
        #expect(list.next(after: date("2026-01-01T20:00:00Z")) == date("2026-07-01T08:00:00Z"))
    }

    @Test("day of month and day of week restricted together match either, as in Vixie cron")
    func dayOr() throws {
        let schedule = try CronSchedule("0 0 13 * fri")
        // 2026-11-27 is a Friday, before the 13th of December.
        #expect(schedule.next(after: date("2026-11-26T00:00:00Z")) == date("2026-11-27T00:00:00Z"))
    }

    @Test("a leading seconds field makes slots one second long")
    func seconds() throws {
        let schedule = try CronSchedule("*/2 * * * * *")
        #expect(schedule.hasSeconds)
        #expect(schedule.next(after: date("2026-11-26T10:00:01Z")) == date("2026-11-26T10:00:02Z"))
        #expect(schedule.slot(containing: Date(timeIntervalSince1970: 100.7)) == Date(timeIntervalSince1970: 100))
    }

    @Test("missed slots collapse into the newest one")
    func latestDue() throws {
        let schedule = try CronSchedule("0 * * * *")
        let due = schedule.latestDue(after: date("2026-11-26T01:00:00Z"), now: date("2026-11-26T05:30:00Z"))
        #expect(due == date("2026-11-26T05:00:00Z"))
        #expect(schedule.latestDue(after: date("2026-11-26T05:00:00Z"), now: date("2026-11-26T05:30:00Z")) == nil)
    }

    @Test("CRON_TZ reads the fields in a zone, with its summer time")
    func timeZone() throws {
        let berlin = try CronSchedule("CRON_TZ=Europe/Berlin 0 3 * * *")
        #expect(berlin.timeZone.identifier == "Europe/Berlin")
        #expect(berlin.expression == "CRON_TZ=Europe/Berlin 0 3 * * *")
        #expect(berlin.next(after: date("2026-12-03T12:00:00Z")) == date("2026-12-04T02:00:00Z"))
        #expect(berlin.next(after: date("2026-07-01T12:00:00Z")) == date("2026-07-02T01:00:00Z"))
        let weekdays = try CronSchedule("TZ=America/New_York 0 9 * * mon-fri")
        // Friday 2026-11-27, 10:00 in New York: the next run is Monday at 09:00 EST.
        #expect(weekdays.next(after: date("2026-11-27T15:00:00Z")) == date("2026-11-30T14:00:00Z"))
        #expect(try CronSchedule("CRON_TZ=Asia/Tokyo @daily").next(after: date("2026-12-03T16:00:00Z")) == date("2026-12-04T15:00:00Z"))
        #expect(try CronSchedule("CRON_TZ=Asia/Kathmandu 0 6 * * *").next(after: date("2026-12-03T00:00:00Z")) == date("2026-12-03T00:15:00Z"))
        #expect(try CronSchedule("CRON_TZ=UTC 0 3 * * *") == CronSchedule("CRON_TZ=UTC 0 3 * * *"))
        let hourly = try CronSchedule("CRON_TZ=Europe/Berlin 0 * * * *")
        let due = hourly.latestDue(after: date("2026-11-26T01:00:00Z"), now: date("2026-11-26T05:30:00Z"))
        #expect(due == date("2026-11-26T05:00:00Z"))
    }

    @Test("a time the clocks skip runs once, at the change; a fixed time they pass twice runs the first time")
    func daylightSaving() throws {
        // Berlin, 2026: 02:00 CET becomes 03:00 CEST on 29 March (01:00 UTC); 03:00 CEST
        // becomes 02:00 CET on 25 October (01:00 UTC).
        let halfPastTwo = try CronSchedule("CRON_TZ=Europe/Berlin 30 2 * * *")
        #expect(halfPastTwo.next(after: date("2026-03-28T01:30:00Z")) == date("2026-03-29T01:00:00Z"))
        #expect(halfPastTwo.next(after: date("2026-03-29T01:00:00Z")) == date("2026-03-30T00:30:00Z"))
        #expect(halfPastTwo.next(after: date("2026-10-24T12:00:00Z")) == date("2026-10-25T00:30:00Z"))
        #expect(halfPastTwo.next(after: date("2026-10-25T00:30:00Z")) == date("2026-10-26T01:30:00Z"))
        // Asked during the second 02:xx, a fixed 02:30 has had its run.
        #expect(halfPastTwo.next(after: date("2026-10-25T01:10:00Z")) == date("2026-10-26T01:30:00Z"))

        // Every half hour: the skipped 02:00 and 02:30 collapse into the change (03:00 CEST)...
        let everyHalfHour = try CronSchedule("CRON_TZ=Europe/Berlin */30 * * * *")
        var runs: [Date] = []
        var cursor = date("2026-03-29T00:00:00Z")
        while let next = everyHalfHour.next(after: cursor), next <= date("2026-03-29T02:00:00Z") { runs.append(next); cursor = next }
        #expect(runs == ["00:30", "01:00", "01:30", "02:00"].map { date("2026-03-29T\($0):00Z") })
        // ...and the hour passed twice in October runs twice, as its hour field is '*'.
        runs = []
        cursor = date("2026-10-24T23:45:00Z")
        while let next = everyHalfHour.next(after: cursor), next <= date("2026-10-25T02:30:00Z") { runs.append(next); cursor = next }
        #expect(runs == ["00:00", "00:30", "01:00", "01:30", "02:00", "02:30"].map { date("2026-10-25T\($0):00Z") })

        // Every 20 seconds, asked just before the clocks go back: the second 02:00:00 is next.
        let seconds = try CronSchedule("CRON_TZ=Europe/Berlin */20 * * * * *")
        #expect(seconds.next(after: date("2026-10-25T00:59:50Z")) == date("2026-10-25T01:00:00Z"))
    }

    @Test("@every runs at fixed intervals counted from 1970 UTC")
    func every() throws {
        let quarter = try CronSchedule("@every 15m")
        #expect(quarter.interval == 900 && !quarter.hasSeconds)
        #expect(quarter.next(after: date("2026-11-26T10:07:30Z")) == date("2026-11-26T10:15:00Z"))
        #expect(quarter.next(after: date("2026-11-26T10:15:00Z")) == date("2026-11-26T10:30:00Z"))
        #expect(quarter.slot(containing: date("2026-11-26T10:29:59Z")) == date("2026-11-26T10:15:00Z"))
        let odd = try CronSchedule("@every 1h30m")
        #expect(odd.interval == 5_400)
        #expect(odd.next(after: date("2026-11-26T00:00:00Z")) == date("2026-11-26T01:30:00Z"))
        let seconds = try CronSchedule("@EVERY 90s")
        #expect(seconds.hasSeconds && seconds.resolution == 90)
        #expect(seconds.slot(containing: Date(timeIntervalSince1970: 100)) == Date(timeIntervalSince1970: 90))
        #expect(seconds.next(after: Date(timeIntervalSince1970: 100)) == Date(timeIntervalSince1970: 180))
        // 2026-11-26 is day 20,783 since 1970 (odd): two-day slots fall on the 25th and the 27th.
        #expect(try CronSchedule("@every 2d").latestDue(after: date("2026-11-20T00:00:00Z"), now: date("2026-11-26T12:00:00Z")) == date("2026-11-25T00:00:00Z"))
    }

    @Test("a day that only some months have fires in those; with a day of the week as well, either is enough")
    func rareDays() throws {
        #expect(try CronSchedule("0 4 29 2 *").next(after: date("2026-11-26T00:00:00Z")) == date("2028-02-29T04:00:00Z"))
        #expect(try CronSchedule("0 4 30,31 2,4 *").next(after: date("2026-11-26T00:00:00Z")) == date("2027-04-30T04:00:00Z"))
        // Feb 31 or any Monday: Mondays in February.
        #expect(try CronSchedule("0 4 31 2 1").next(after: date("2026-11-26T00:00:00Z")) == date("2027-02-01T04:00:00Z"))
    }

    @Test("invalid expressions say what is wrong", arguments: [
        ("* * * *", "4 fields"),
        ("61 * * * *", "minute 61 is outside 0-59"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("* * * foo *", "'foo'"),
        ("@sometimes", "unknown macro"),
        ("CRON_TZ=Mars/Olympus 0 3 * * *", "time zone 'Mars/Olympus' is not known"),
        ("CRON_TZ= 0 3 * * *", "time zone '' is not known"),
        ("TZ=Europe/Berlin 0 3 * *", "4 fields"),
        ("@every", "'' is not one"),
        ("@every 15", "'15' is not one"),
        ("@every 5x", "'5x' is not one"),
        ("@every 0s", "outside 1 second to 366 days"),
        ("@every 400d", "outside 1 second to 366 days"),
        ("CRON_TZ=Europe/Berlin @every 1h", "CRON_TZ does not apply to @every"),
        // Parsed, and never fired: 'next never' in 'locod cron', a job that silently never ran.
        ("0 4 31 2 *", "it never fires: Feb has no day 31"),
        ("0 4 30,31 feb *", "it never fires: Feb has no day 30 or 31"),
        ("0 4 31 4,6,9,11 *", "it never fires: Apr, Jun, Sep, Nov have no day 31"),
    ])
    func invalid(expression: String, mentions: String) {
        #expect {
            _ = try CronSchedule(expression)
        } throws: { error in
            guard let error = error as? QueueError, case .invalidCronExpression = error else { return false }
            return error.message.contains(mentions) && error.code == "invalid_cron_expression" && !error.hint.isEmpty
        }
    }
}

@Suite("Retry backoff")
struct RetryPolicyTests {
    @Test("the ceiling doubles per attempt up to the cap")
    func ceiling() {
        let policy = RetryPolicy(base: .seconds(1), cap: .seconds(60))
        #expect(policy.ceiling(afterAttempt: 1) == .seconds(1))
        #expect(policy.ceiling(afterAttempt: 2) == .seconds(2))
        #expect(policy.ceiling(afterAttempt: 6) == .seconds(32))
        #expect(policy.ceiling(afterAttempt: 7) == .seconds(60))
        #expect(policy.ceiling(afterAttempt: 500) == .seconds(60))
    }

    @Test("full jitter spreads delays over the whole range")
    func jitter() {
        let policy = RetryPolicy(base: .seconds(1), cap: .seconds(600))
        #expect(policy.delay(afterAttempt: 4, random: 0) == .zero)
        #expect(policy.delay(afterAttempt: 4, random: 1) == .seconds(8))
        #expect(policy.delay(afterAttempt: 4, random: 0.5) == .seconds(4))
        let samples = (0..<200).map { _ in policy.delay(afterAttempt: 5) }
        #expect(samples.allSatisfy { $0 >= .zero && $0 <= .seconds(16) })
        #expect(Set(samples).count > 50)
    }
}

@Suite("Database URLs")
struct DatabaseURLTests {
    @Test("parses every part and never prints the password")
    func parse() throws {
        let url = try DatabaseURL("postgres://loco:s3cr%40t@db.internal:6543/loco_prod")
        #expect(url.host == "db.internal")
        #expect(url.port == 6543)
        #expect(url.username == "loco")
        #expect(url.password == "s3cr@t")
        #expect(url.database == "loco_prod")
        #expect(!url.description.contains("s3cr"))
        #expect(url.description == "postgres://loco:***@db.internal:6543/loco_prod")
    }

    @Test("a Unix-socket URL names the socket file, libpq style, and round-trips")
    func socket() throws {
        let url = try DatabaseURL("postgres://loco:pw@/loco_prod?host=/run/postgresql&port=5433")
        #expect(url.socketDirectory == "/run/postgresql")
        #expect(url.port == 5433)
        #expect(url.database == "loco_prod")
        #expect(url.endpoint == "/run/postgresql/.s.PGSQL.5433")
        #expect(!url.description.contains("pw"))
        #expect(try DatabaseURL(url.urlString) == url)
        #expect(try DatabaseURL(DatabaseURL("postgres://a:b@db:6000/x").urlString) == DatabaseURL("postgres://a:b@db:6000/x"))
    }

    @Test("?pgbouncer=true marks a pooler in transaction mode, survives a round trip and shows in the description; other values are refused")
    func transactionPooler() throws {
        #expect(try !DatabaseURL("postgres://a:b@db:6432/x").transactionPooler)
        let url = try DatabaseURL("postgres://a:b@db:6432/x?pgbouncer=true&sslmode=require")
        #expect(url.transactionPooler && url.requireTLS)
        #expect(url.description == "postgres://a:***@db:6432/x?sslmode=require&pgbouncer=true")
        #expect(try DatabaseURL(url.urlString) == url)
        let socket = try DatabaseURL("postgres://a@/x?host=/run/pgbouncer&port=6432&pgbouncer=1")
        #expect(socket.transactionPooler && socket.description == "postgres://a@/x?host=/run/pgbouncer&port=6432&pgbouncer=true")
        #expect(try DatabaseURL(socket.urlString) == socket)
        #expect(try !DatabaseURL("postgres://a@db/x?pgbouncer=false").transactionPooler)
        #expect {
            _ = try DatabaseURL("postgres://a:hunter2@db/x?pgbouncer=yes")
        } throws: { error in
            let error = error as? QueueError
            return error?.code == "invalid_database_url" && error?.message.contains("pgbouncer 'yes'") == true && error?.message.contains("hunter2") == false
        }
    }

    @Test("?busy_poll=MICROSECONDS sets busy polling for single enqueues, survives a round trip and shows in the description; 0 turns it off; other values, and busy polling behind a pooler, are refused")
    func busyPoll() throws {
        #expect(try DatabaseURL("postgres://a:b@db/x").busyPoll == nil)
        let url = try DatabaseURL("postgres://a:b@db/x?busy_poll=500")
        #expect(url.busyPoll == .microseconds(500) && url.busyPollMicroseconds == 500)
        #expect(url.description == "postgres://a:***@db:5432/x?busy_poll=500")
        #expect(try DatabaseURL(url.urlString) == url)
        let socket = try DatabaseURL("postgres://a@/x?host=/run/postgresql&port=5433&busy_poll=10000")
        #expect(socket.busyPoll == .milliseconds(10))
        #expect(try DatabaseURL(socket.urlString) == socket)
        #expect(try DatabaseURL("postgres://a@db/x?busy_poll=0").busyPoll == nil)
        for (value, words) in [("fast", "busy_poll 'fast' is not a number of microseconds from 0 to 10000"),
                               ("10001", "busy_poll '10001' is not a number"), ("-5", "busy_poll '-5' is not a number")] {
            #expect {
                _ = try DatabaseURL("postgres://a:hunter2@db/x?busy_poll=\(value)")
            } throws: { error in
                let error = error as? QueueError
                return error?.code == "invalid_database_url" && error?.message.contains(words) == true && error?.message.contains("hunter2") == false
            }
        }
        #expect {
            _ = try DatabaseURL("postgres://a@db:6432/x?pgbouncer=true&busy_poll=500")
        } throws: { error in
            (error as? QueueError)?.message.contains("busy_poll does nothing behind a pooler in transaction mode (pgbouncer=true)") == true
        }
    }

    @Test("a server that is stopping, reported as a DatabaseServerError, is database_unreachable with PostgreSQL's own words and the SQLSTATE once")
    func stoppingServerExplained() throws {
        let url = try DatabaseURL("postgres://a:b@db:5432/x")
        let stopping = DatabaseServerError(fields: [.sqlState: "57P01", .message: "terminating connection due to administrator command", .severity: "FATAL"])
        let explained = try #require(url.explain(stopping) as? QueueError)
        #expect(explained.code == "database_unreachable")
        #expect(explained.message.hasSuffix("db:5432: terminating connection due to administrator command (SQLSTATE 57P01)"), "\(explained.message)")
        // A login the server refused is not "cannot reach": it names the user and the server's words.
        let refused = DatabaseServerError(fields: [.sqlState: "28P01", .message: "password authentication failed for user \"a\""])
        let login = try #require(url.explain(refused) as? QueueError)
        #expect(login.code == "database_login_refused")
        #expect(login.message == "PostgreSQL at db:5432 refused to log user 'a' in: password authentication failed for user \"a\" (SQLSTATE 28P01)", "\(login.message)")
        #expect(!login.message.contains(":b@") && !login.hint.contains("b@"))
    }

    /// Why `text` is refused as a database URL (nil: it is not); never with its password, hunter2.
    static func refusal(_ text: String) -> String? {
        do {
            _ = try DatabaseURL(text)
            return nil
        } catch {
            #expect(error.code == "invalid_database_url")
            #expect(!error.message.contains("hunter2"))
            return error.message
        }
    }

    @Test("passwords are decoded once (a literal %41 stays), reserved characters unencoded and bad ports are named, IPv6 hosts go in brackets; each round-trips")
    func awkwardParts() throws {
        // %2541 is a literal "%41": decoding twice made it "A"; a stray % kept as written.
        for (text, password) in [("postgres://u:a%2541@db/x", "a%41"), ("postgres://u:p%zz@db/x", "p%zz"), ("postgres://u:p%40ss%3A%2F%23@db/x", "p@ss:/#")] {
            let url = try DatabaseURL(text)
            #expect(url.password == password, "\(text)")
            #expect(try DatabaseURL(url.urlString) == url, "\(url.urlString)")
        }
        // Said as what is wrong, where "it must start with postgres://" was said of all three.
        for text in ["postgres://u:hunter2#@db:5432/x", "postgres://u:hunter2/x@db:5432/x", "postgres://u:hunter2?@db/x"] {
            #expect(Self.refusal(text)?.contains("its user or password holds a character a URL reserves; percent-encode it (/ as %2F, ? as %3F, # as %23") == true, "\(text): \(Self.refusal(text) ?? "accepted")")
        }
        #expect(Self.refusal("postgres://u:hunter2@db:5x/x") == "the database URL is not valid: port '5x' is not a number")
        #expect(Self.refusal("postgres://u:hunter2@db:99999/x") == "the database URL is not valid: port 99999 is not from 1 to 65535")
        #expect(Self.refusal("mysql://u:hunter2@db/x")?.contains("it must start with postgres://") == true)
        let ipv6 = try DatabaseURL("postgres://u@[::1]:6543/x")
        #expect(ipv6.host == "::1" && ipv6.endpoint == "[::1]:6543" && ipv6.description == "postgres://u@[::1]:6543/x")
        #expect(try DatabaseURL(ipv6.urlString) == ipv6)
    }

    @Test("libpq's password file: wildcards, escapes, comments, the first matching line; PGPASSWORD before it, the URL's own password before both; a file others may read is passed over with a warning")
    func passwordFile() throws {
        let text = #"""
            # comment:*:*:*:not-this
            db.internal:5432:loco:loco:first
            db.internal:5432:loco:loco:second
            *:6432:*:ops:pa\\ss\:word:ignored
            /run/postgresql:5432:*:sock:by-folder
            localhost:5433:*:sock:by-localhost

            """#
        #expect(PasswordFile.password(in: text, host: "db.internal", port: 5432, database: "loco", user: "loco") == "first")
        #expect(PasswordFile.password(in: text, host: "pooler", port: 6432, database: "any", user: "ops") == #"pa\ss:word"#)
        #expect(PasswordFile.password(in: text, host: "db.internal", port: 5433, database: "loco", user: "loco") == nil)
        #expect(PasswordFile.password(in: text, host: "comment", port: 5432, database: "x", user: "x") == nil)

        let folder = NSTemporaryDirectory() + "loco-pgpass-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = folder + "/pgpass"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
        var warnings: [String] = []
        let url = try DatabaseURL("postgres://loco@db.internal:5432/loco")
        #expect(url.withPassword(from: ["PGPASSFILE": file], warn: { warnings.append($0) }).password == "first")
        #expect(url.withPassword(from: ["HOME": folder], warn: { warnings.append($0) }).password == nil)
        #expect(url.withPassword(from: ["PGPASSFILE": file, "PGPASSWORD": "from-env"], warn: { warnings.append($0) }).password == "from-env")
        #expect(try DatabaseURL("postgres://loco:own@db.internal/loco").withPassword(from: ["PGPASSWORD": "from-env"], warn: { warnings.append($0) }).password == "own")
        // A socket connection matches its folder, or localhost.
        #expect(try DatabaseURL("postgres://sock@/x?host=/run/postgresql&port=5432").withPassword(from: ["PGPASSFILE": file], warn: { warnings.append($0) }).password == "by-folder")
        #expect(try DatabaseURL("postgres://sock@/x?host=/tmp&port=5433").withPassword(from: ["PGPASSFILE": file], warn: { warnings.append($0) }).password == "by-localhost")
        #expect(warnings.isEmpty, "\(warnings)")
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
        #expect(url.withPassword(from: ["PGPASSFILE": file], warn: { warnings.append($0) }).password == nil)
        #expect(warnings == ["password file \(file) has group or world access, so it is not used; make it private: chmod 0600 \(file)"])
    }

    @Test("libpq's TLS parameters: sslmode values, files read when the URL is read, a Unix socket with required TLS refused, unknown parameters refused with a guess")
    func tlsParameters() throws {
        // libpq's default is prefer; every libpq mode reads.
        #expect(try DatabaseURL("postgres://a@db/x").tls.mode == .prefer)
        for mode in DatabaseTLS.Mode.allCases {
            #expect(try DatabaseURL("postgres://a@db/x?sslmode=\(mode.rawValue)").tls.mode == mode)
        }
        #expect(Self.refusal("postgres://a:hunter2@db/x?sslmode=required")?.contains("sslmode 'required' is not one of disable, allow, prefer, require, verify-ca, verify-full") == true)
        // A misspelt parameter is refused rather than ignored (it would connect without TLS).
        #expect(Self.refusal("postgres://a:hunter2@db/x?sslmod=require") == "the database URL is not valid: it has a parameter 'sslmod' Loco does not know (did you mean 'sslmode'?); it knows host, port, sslmode, sslrootcert, sslcert, sslkey, application_name, pgbouncer, busy_poll")
        #expect(Self.refusal("postgres://a@db/x?target_session_attrs=read-write")?.contains("'target_session_attrs' Loco does not know; it knows") == true)
        // Files are read with the URL, so a wrong path is said at once.
        let folder = NSTemporaryDirectory() + "loco-url-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "not a certificate\n".write(toFile: folder + "/junk.pem", atomically: true, encoding: .utf8)
        #expect(Self.refusal("postgres://a@db/x?sslmode=verify-full&sslrootcert=\(folder)/missing.pem") == "the database URL is not valid: sslrootcert '\(folder)/missing.pem' cannot be read: there is no such file")
        #expect(Self.refusal("postgres://a@db/x?sslmode=verify-full&sslrootcert=\(folder)")?.hasSuffix("cannot be read: it is a folder") == true)
        #expect(Self.refusal("postgres://a@db/x?sslrootcert=\(folder)/junk.pem")?.hasSuffix("holds no PEM certificate (-----BEGIN CERTIFICATE-----)") == true)
        #expect(Self.refusal("postgres://a@db/x?sslcert=\(folder)/junk.pem")?.hasSuffix("sslcert is given without sslkey, the file of its private key") == true)
        #expect(Self.refusal("postgres://a@db/x?sslkey=\(folder)/junk.pem")?.hasSuffix("sslkey is given without sslcert, the file of its certificate") == true)
        #expect(Self.refusal("postgres://a@db/x?sslmode=disable&sslrootcert=\(folder)/junk.pem")?.contains("sslrootcert is given but sslmode=disable uses no TLS") == true)
        // PostgreSQL speaks no TLS on its socket: a demand for it there is refused; prefer is dropped.
        #expect(Self.refusal("postgres://a@/x?host=/run/postgresql&sslmode=verify-full")?.contains("sslmode=verify-full cannot hold on a Unix socket") == true)
        #expect(try DatabaseURL("postgres://a@/x?host=/run/postgresql&sslmode=prefer").tls.mode == .disable)
        // The system's CAs by name, as libpq 16 spells it; what a child process is handed keeps it all.
        let url = try DatabaseURL("postgres://a:hunter2@db:6432/x?sslmode=verify-full&sslrootcert=system&application_name=locod%20worker")
        #expect(url.tls.rootCertificate == "system" && url.applicationName == "locod worker" && url.requireTLS)
        #expect(try DatabaseURL(url.urlString) == url)
        #expect(url.description == "postgres://a:***@db:6432/x?sslmode=verify-full")
    }

    @Test("a malformed URL is refused without echoing its password")
    func malformed() {
        #expect {
            _ = try DatabaseURL("mysql://root:hunter2@localhost/db")
        } throws: { error in
            let error = error as? QueueError
            return error?.code == "invalid_database_url" && error?.message.contains("hunter2") == false
        }
    }
}
