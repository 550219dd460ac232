#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes to stdout and stderr for the command-line tools (`loco`, `locod`).
public enum StandardStreams {
    /// Every byte, or the end as any Unix tool meets it: when the reader has gone (`loco
    /// deployments | head`), SIGPIPE. These processes ignore SIGPIPE (NIO does), and
    /// Foundation's `FileHandle.write` traps on the EPIPE they get instead, which crashed `loco`
    /// with a backtrace.
    public static func write(_ text: String, to descriptor: Int32) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { buffer in
                #if canImport(Glibc)
                Glibc.write(descriptor, buffer.baseAddress, buffer.count)
                #else
                Darwin.write(descriptor, buffer.baseAddress, buffer.count)
                #endif
            }
            if written >= 0 { bytes = bytes.dropFirst(written); continue }
            switch errno {
            case EINTR: continue
            case EAGAIN: usleep(1000)  // a non-blocking stream that is full
            case EPIPE:
                signal(SIGPIPE, SIG_DFL)
                raise(SIGPIPE)
                exit(141)
            default: return  // the stream is closed or its disk is full: nothing more can be shown
            }
        }
    }
}
