import Foundation
import LocoShared

/// What the terminal can show: colour only on a TTY without NO_COLOR, redrawing only on a TTY.
struct Terminal: Sendable {
    let isTTY: Bool
    let color: Bool

    static let current: Terminal = {
        let tty = isatty(STDOUT_FILENO) == 1
        let noColor = ProcessInfo.processInfo.environment["NO_COLOR"].map { !$0.isEmpty } ?? false
        return Terminal(isTTY: tty, color: tty && !noColor && ProcessInfo.processInfo.environment["TERM"] != "dumb")
    }()

    static var stdinIsTTY: Bool { isatty(STDIN_FILENO) == 1 }

    func paint(_ text: String, _ code: String) -> String { color ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }
    func green(_ text: String) -> String { paint(text, "32") }
    func red(_ text: String) -> String { paint(text, "31") }
    func yellow(_ text: String) -> String { paint(text, "33") }
    func cyan(_ text: String) -> String { paint(text, "36") }
    func dim(_ text: String) -> String { paint(text, "2") }
    func bold(_ text: String) -> String { paint(text, "1") }
}

/// Output that is flushed at once (progress must show while a deploy runs).
enum Out {
    static func line(_ text: String = "") { StandardStreams.write(text + "\n", to: STDOUT_FILENO) }
    static func raw(_ text: String) { StandardStreams.write(text, to: STDOUT_FILENO) }
    static func error(_ text: String) { StandardStreams.write(text + "\n", to: STDERR_FILENO) }
}

/// Asks a question on the terminal and returns the answer (or the default on an empty line).
func prompt(_ question: String, default value: String? = nil) -> String? {
    Out.raw(value.map { "\(question) [\($0)]: " } ?? "\(question): ")
    guard let answer = readLine(strippingNewline: true) else { return value }
    let trimmed = answer.trimmingCharacters(in: .whitespaces)
    return trimmed.isEmpty ? value : trimmed
}

/// Human-friendly durations and sizes.
enum Format {
    static func seconds(_ value: Double) -> String {
        value < 10 ? String(format: "%.1fs", value) : value < 120 ? "\(Int(value.rounded()))s" : "\(Int(value) / 60)m\(Int(value) % 60)s"
    }
    static func bytes(_ value: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB"]
        var amount = Double(value), unit = 0
        while amount >= 1024, unit < units.count - 1 { amount /= 1024; unit += 1 }
        return unit == 0 ? "\(value) B" : String(format: "%.1f %@", amount, units[unit])
    }
}
