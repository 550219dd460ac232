import Synchronization

/// Keeps a long output readable and bounded: the first lines as they come, then only a window
/// of the last lines; what was dropped in the middle is counted. The tail is always kept.
public final class BoundedLog: Sendable {
    struct State {
        var head: [String] = []
        var tail: [String] = []
        var dropped = 0
        var total = 0
    }

    let headLimit: Int
    let tailLimit: Int
    let maxLineLength: Int
    private let state = Mutex(State())

    public init(headLimit: Int = 200, tailLimit: Int = 100, maxLineLength: Int = 2000) {
        self.headLimit = headLimit
        self.tailLimit = tailLimit
        self.maxLineLength = maxLineLength
    }

    /// Adds a line; returns it if it is one to show live (within the head), else `nil`.
    @discardableResult
    public func append(_ line: String) -> String? {
        let clipped = line.count > maxLineLength ? String(line.prefix(maxLineLength)) + " …" : line
        return state.withLock { state in
            state.total += 1
            if state.head.count < headLimit {
                state.head.append(clipped)
                return clipped
            }
            state.tail.append(clipped)
            if state.tail.count > tailLimit {
                state.tail.removeFirst()
                state.dropped += 1
            }
            return nil
        }
    }

    /// Lines held back after the head (the tail), with a marker for what was dropped.
    public func heldBack() -> [String] {
        state.withLock { state in
            (state.dropped > 0 ? ["[… \(state.dropped) lines of output omitted …]"] : []) + state.tail
        }
    }

    /// The last `count` lines seen (from head and tail).
    public func last(_ count: Int) -> [String] {
        state.withLock { state in Array((state.head + state.tail).suffix(count)) }
    }

    public var totalLines: Int { state.withLock { $0.total } }
}
