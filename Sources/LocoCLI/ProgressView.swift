import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1
import LocoShared
import NIOCore

/// What a person sees while a deployment runs. On a terminal: finished stages stay, the running
/// one has a spinner and its elapsed time, and build output is collapsed to its last lines. Elsewhere
/// (CI logs): one plain line per event.
final class ProgressView: Sendable {
    let terminal: Terminal
    let live: Bool
    static let collapsedLines = 6
    static let frames = Array("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")

    struct State {
        var stage: String?
        var stageMessage = ""
        var stageStarted = Date()
        var output: [String] = []
        var drawn = 0
        var frame = 0
        var stopped = false
    }
    private let state = NIOLockedValueBox(State())
    private let ticker = NIOLockedValueBox<Task<Void, Never>?>(nil)

    init(terminal: Terminal, live: Bool) {
        self.terminal = terminal
        self.live = live
        if live {
            ticker.withLockedValue { $0 = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(120))
                    self?.redraw(permanent: [])
                }
            } }
        }
    }

    func event(_ event: JSONValue) {
        let type = event["type"]?.text ?? ""
        let stage = event["stage"]?.stringValue
        let message = event["message"]?.text ?? ""
        switch type {
        case "build_output":
            if live { state.withLockedValue { $0.output.append(message); if $0.output.count > 200 { $0.output.removeFirst(100) } } }
            else { Out.line(terminal.dim("    │ ") + message) }
        case "stage_started":
            state.withLockedValue { $0.stage = stage; $0.stageMessage = message; $0.stageStarted = Date(); $0.output = [] }
            if !live { Out.line("▸ \(message)") } else { redraw(permanent: []) }
        case "stage_finished":
            let elapsed = state.withLockedValue { current -> Double in
                defer { if current.stage == stage { current.stage = nil; current.output = [] } }
                return Date().timeIntervalSince(current.stageStarted)
            }
            let line = terminal.green("✔") + " \(stage ?? "stage") " + terminal.dim("(\(Format.seconds(elapsed)))") + "  \(message)"
            if live { redraw(permanent: [line]) } else { Out.line(line) }
        case "failed", "cancelled", "succeeded":
            // The final document tells this better; the stream just ends here.
            break
        default:
            let line = terminal.dim("• \(message)")
            if live { redraw(permanent: [line]) } else { Out.line(line) }
        }
    }

    /// Clears the live block, prints `permanent` lines above it, then draws it again.
    func redraw(permanent: [String]) {
        state.withLockedValue { state in
            guard !state.stopped else { return }
            var text = state.drawn > 0 ? "\u{1B}[\(state.drawn)A\r\u{1B}[J" : ""
            for line in permanent { text += line + "\n" }
            var drawn = 0
            if let stage = state.stage {
                state.frame = (state.frame + 1) % Self.frames.count
                let elapsed = Date().timeIntervalSince(state.stageStarted)
                text += terminal.yellow(String(Self.frames[state.frame])) + " \(state.stageMessage.isEmpty ? stage : state.stageMessage) " + terminal.dim(Format.seconds(elapsed)) + "\n"
                drawn += 1
                let width = 120
                for line in state.output.suffix(Self.collapsedLines) {
                    text += terminal.dim("    │ " + String(line.prefix(width))) + "\n"
                    drawn += 1
                }
            }
            state.drawn = drawn
            Out.raw(text)
        }
    }

    /// Removes the live block for good (before the final summary or a question).
    func stop() {
        ticker.withLockedValue { $0?.cancel(); $0 = nil }
        guard live else { return }
        state.withLockedValue { state in
            if state.drawn > 0 { Out.raw("\u{1B}[\(state.drawn)A\r\u{1B}[J") }
            state.drawn = 0
            state.stopped = true
        }
    }
}
