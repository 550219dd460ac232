import Foundation

/// What a running child process is doing, for a test's failure report.
///
/// Written for a `locod worker` seen spinning on one NIO event loop (CI, at 98ba905): its
/// connections on that loop never connected and its parts there never ran. Four stack samples
/// caught the loop between Swift jobs, which says that jobs keep coming but not which.
public enum ProcessDiagnosis {
    /// CPU time over 2 s; where each event-loop thread is, in four samples; and, if the process
    /// spins, the tasks enqueued meanwhile, which name the one that keeps coming back.
    public static func report(pid: Int32) async -> String {
        let before = cpuTicks(pid)
        try? await Task.sleep(for: .seconds(2))
        let after = cpuTicks(pid)
        var report = "cpu ticks (user system): \(before.map { "\($0.user) \($0.system)" } ?? "?"), 2 s later \(after.map { "\($0.user) \($0.system)" } ?? "?")\n"
        report += "event-loop threads:\n" + (await eventLoopSamples(pid: pid)).suffix(40000)
        // 2 s hold 200 ticks; more than half of one core is a spin, not a worker at rest.
        if let before, let after, after.user + after.system - before.user - before.system > 100 {
            report += "\ntasks enqueued meanwhile, each with its async call chain (a spinning task keeps coming back):\n" + (await enqueuers(pid: pid)).suffix(30000)
        }
        return report
    }

    /// The process's CPU time so far in clock ticks (/proc/PID/stat, fields 14 and 15).
    static func cpuTicks(_ pid: Int32) -> (user: Int, system: Int)? {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        // The command name may hold spaces; the fields after it do not.
        let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { return nil }
        return (user, system)
    }

    /// Four samples, 300 ms apart, of the NIO threads' stacks, 40 frames deep.
    static func eventLoopSamples(pid: Int32) async -> String {
        var samples: [String] = []
        for sample in 1...4 {
            let output = await gdb(pid: pid, ["-ex", "thread apply all bt 40"])
            samples.append("sample \(sample):\n" + frames(of: output, threadsNamed: "NIO-"))
            try? await Task.sleep(for: .milliseconds(300))
        }
        return samples.joined(separator: "\n")
    }

    /// Eight stops at `swift_task_enqueue`, every job's way to an executor, each with the
    /// enqueued task's async call chain (its resume function, then each waiting caller's), read
    /// from the job: the thread's own stack ends at `swift_task_switch` and names no caller. A
    /// task that keeps enqueuing itself fills most of them.
    static func enqueuers(pid: Int32) async -> String {
        // Job (x86_64): heap object header 16, SchedulerPrivate 16, flags and id 8, voucher and
        // reserved 16, then the task's resume function (56) and its async context (64). Each
        // async context starts with its parent context and the parent's resume function.
        let script = """
            break swift_task_enqueue
            define asyncbt
              info symbol *(void**)((char*)$rdi+56)
              set $ctx = *(void**)((char*)$rdi+64)
              set $n = 0
              while $ctx != 0 && $n < 30
                info symbol *(void**)((char*)$ctx+8)
                set $ctx = *(void**)$ctx
                set $n = $n + 1
              end
            end

            """ + String(repeating: "continue\nasyncbt\n", count: 8) + "delete\ndetach\n"
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("loco-enqueuers-\(UUID().uuidString).gdb")
        defer { try? FileManager.default.removeItem(at: file) }
        guard (try? script.write(to: file, atomically: true, encoding: .utf8)) != nil else { return "cannot write \(file.path)" }
        let output = await gdb(pid: pid, ["-x", file.path])
        let lines = output.split(separator: "\n").compactMap { line -> String? in
            // `Thread 5 "NIO-SGLTN-1-#1" hit Breakpoint 1, …`: which thread enqueued it.
            if line.hasPrefix("Thread") { return "== enqueued on thread " + (line.split(separator: " ").dropFirst().prefix(2).joined(separator: " ")) }
            guard let symbol = line.components(separatedBy: " in section ").first, line.contains(" in section ") else { return nil }
            return symbol.trimmingCharacters(in: .whitespaces)
        }
        // Readable names (Maintenance.promoteLoop(_:)); the mangled ones if the demangler is missing.
        let demangled = try? await runCommand(URL(fileURLWithPath: "/opt/swift/usr/bin/swift-demangle"), ["--simplified", "--compact"] + lines)
        return demangled?.status == 0 ? demangled!.output : lines.joined(separator: "\n")
    }

    private static func gdb(pid: Int32, _ commands: [String]) async -> String {
        let run = try? await runCommand(URL(fileURLWithPath: "/usr/bin/gdb"),
                                        ["-p", "\(pid)", "-batch", "-ex", "set pagination off"] + commands, timeout: .seconds(60))
        return run?.output ?? "gdb failed or took over 60 s (scripts/test installs gdb)"
    }

    /// The lines of gdb's output that name a thread whose name contains `name`, and its frames.
    private static func frames(of output: String, threadsNamed name: String) -> String {
        var keep = false
        return output.split(separator: "\n").filter { line in
            if line.hasPrefix("Thread") { keep = line.contains(name) }
            return keep && (line.hasPrefix("Thread") || line.hasPrefix("#"))
        }.map { String($0.prefix(240)) }.joined(separator: "\n")
    }
}
