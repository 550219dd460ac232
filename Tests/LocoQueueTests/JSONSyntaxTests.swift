import Foundation
import LocoQueue
import LocoTestSupport
import PostgresNIO
import Testing

@Suite("JSON args checked as PostgreSQL's jsonb reads them")
struct JSONSyntaxTests {
    @Test("what Foundation let through and PostgreSQL refused (a trailing comma, \\u0000, a number beyond numeric) is invalid_args naming the place; what PostgreSQL stores is taken")
    func knownCases() async throws {
        try await TestDatabase.with { db in
            let refused: [(args: String, says: String)] = [
                (#"{"a":1,}"#, "line 1, column 7: a trailing comma"),
                // Columns count characters: "é" is two bytes.
                (#"{"é":1,}"#, "line 1, column 7: a trailing comma"),
                ("{\n  \"a\": [1, 2, ],\n}", "line 2, column 13: a trailing comma"),
                (#"{"a":"\u0000"}"#, "line 1, column 7: \\u0000, which PostgreSQL cannot store in jsonb"),
                (#"{"a":1e131072}"#, "line 1, column 6: a number beyond the range PostgreSQL stores"),
                (#"{"a":0.5e-16383}"#, "a number beyond the range PostgreSQL stores"),
                (#"{"a":"\ud800"}"#, "a \\u escape of a high surrogate without a low one after it"),
                (#"{"a":01}"#, "a number with a leading zero"),
                (#"{'a':1}"#, "''' where a quoted key should be"),
                (#"{"a":1} x"#, "'x' after the JSON value"),
                (#"{"a":"tab"# + "\t" + #""}"#, "a control character (byte 0x09) inside a string"),
                ("", "no JSON value"),
                (#"{"a":[1"#, "the text ends inside an array"),
                // Foundation's decoder stops at 512 levels: a handler could not read deeper args.
                ("{\"a\":" + String(repeating: "[", count: 600) + String(repeating: "]", count: 600) + "}", "line 1, column 517: nesting deeper than 512 levels"),
            ]
            for (args, says) in refused {
                await #expect {
                    _ = try await db.store.enqueue(NewJob(queue: "default", kind: "k", args: args), on: db.client)
                } throws: { error in
                    let error = try #require(error as? QueueError)
                    return error.code == "invalid_args" && error.message.contains("args are not valid JSON (") && error.message.contains(says)
                }
                #expect(JSONSyntax.problem(in: args)?.contains(says) == true, "\(args): \(JSONSyntax.problem(in: args) ?? "accepted")")
            }
            // Foundation refused these (beyond a Double); PostgreSQL's numeric stores them.
            for args in [#"{"a":1e999}"#, #"{"a":1e131071}"#, #"{"a":1e-16383}"#, #"{"a":0e99999999}"#, #"{"a":"\ud83d\ude00"}"#] {
                let job = try await db.store.enqueue(NewJob(queue: "default", kind: "k", args: args), on: db.client)
                #expect(job.state == .available, "\(args)")
            }
            await #expect {
                _ = try await db.store.enqueue(NewJob(queue: "default", kind: "k", args: "[1]"), on: db.client)
            } throws: { error in
                (error as? QueueError)?.message.contains("args must be a JSON object, got: [1]") == true
            }
            // The bulk actions' args filter is checked the same way.
            #expect(throws: QueueError.self) { try JobSelection.checkArgsFilter(#"{"deployment_id": 42,}"#) }
        }
    }

    @Test("on 4,000 texts made by breaking valid JSON at random, the check agrees with PostgreSQL's jsonb input on every one")
    func agreesWithPostgreSQL() async throws {
        try await TestDatabase.with { db in
            // Every JSON feature, and numbers at the edges of numeric's range.
            let seeds = [
                #"{"a":1,"b":[true,false,null],"c":{"d":"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}}"#,
                #"[-0.5e+3, 12.25E-2, 0, -0, 1e131071, 1e-16383, 0e99999999, 123.456e131068]"#,
                #"{"a" : [ { } , [ ] , "" ] }"#,
                "\"s\"", "17", "true", "null", #"{"z":"\u0001\u0010\ud800\udc00"}"#,
                #"[1e131072, 0.000e-99999999, 1e2000000000, 0e2000000000, 0.0001e131075]"#,
            ]
            let alphabet = Array(#"{}[],:"\/ u0123456789abcdefEe+-.tnrl"#) + ["\t", "\n", "'", "x", "\u{1}", "é"]
            var random = SplitMix64(seed: 20_261_205)
            var texts = seeds
            while texts.count < 4_000 {
                var characters = Array(seeds[Int(random.next() % UInt64(seeds.count))])
                for _ in 0...(random.next() % 3) {
                    let at = Int(random.next() % UInt64(characters.count + 1))
                    let character = alphabet[Int(random.next() % UInt64(alphabet.count))]
                    switch random.next() % 3 {
                    case 0: characters.insert(character, at: at)
                    case 1: if at < characters.count { characters.remove(at: at) }
                    default: if at < characters.count { characters[at] = character }
                    }
                }
                texts.append(String(characters))
            }
            _ = try await db.client.query("""
                CREATE FUNCTION jsonb_accepts(t text) RETURNS boolean LANGUAGE plpgsql AS $$
                BEGIN PERFORM t::jsonb; RETURN true; EXCEPTION WHEN others THEN RETURN false; END $$
                """)
            var accepted: [Bool] = []
            for try await verdict in try await db.client.query("SELECT jsonb_accepts(t) FROM unnest(\(texts)::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n").decode(Bool.self) {
                accepted.append(verdict)
            }
            #expect(accepted.count == texts.count)
            let disagreements = zip(texts, accepted).filter { (JSONSyntax.problem(in: $0) == nil) != $1 }
            #expect(disagreements.isEmpty, "\(disagreements.count) disagreements, e.g. \(disagreements.prefix(10).map { "\($0) (PostgreSQL: \($1 ? "accepts" : "refuses"); Loco: \(JSONSyntax.problem(in: $0) ?? "accepts"))" })")
            // The mutations made both kinds.
            #expect(accepted.filter { $0 }.count > 400 && accepted.filter { !$0 }.count > 400, "\(accepted.filter { $0 }.count) accepted")
        }
    }
}

/// A seeded generator, so a disagreement found once is found again.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
