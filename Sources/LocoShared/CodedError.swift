/// An error that carries a stable machine-readable code, a one-sentence message and a hint
/// telling the reader what to do about it. Every error Loco shows a person is one of these.
public protocol CodedError: Error, CustomStringConvertible, Sendable {
    /// Stable, lower_snake_case identifier; part of the public interface.
    var code: String { get }
    /// What went wrong, in one sentence, without secrets.
    var message: String { get }
    /// The next step for the reader.
    var hint: String { get }
}

extension CodedError {
    public var description: String { "\(message) (\(code))" }
}
