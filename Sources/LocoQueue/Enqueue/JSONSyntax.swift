/// Checks JSON text the way PostgreSQL's `jsonb` input reads it (RFC 8259; no `\u0000`, which
/// `jsonb` cannot store; numbers within `numeric`'s range), so text that passes is never refused
/// by the database with a bare "invalid input syntax for type json". Foundation's parser accepts
/// trailing commas and `\u0000`, which PostgreSQL refuses, and refuses numbers beyond a Double,
/// which PostgreSQL stores.
public enum JSONSyntax {
    /// Nesting deeper than this is refused: Foundation's decoder stops at 512 levels, so a
    /// handler could not read such args.
    public static let maximumDepth = 512

    /// Where `text` goes wrong and how ("line 1, column 8: a trailing comma"), or nil when it is
    /// one JSON value.
    public static func problem(in text: String) -> String? {
        var text = text
        return text.withUTF8 { bytes in
            var scanner = Scanner(bytes: bytes)
            guard let (reason, offset) = scanner.scan() else { return nil }
            return "\(position(of: offset, in: bytes)): \(reason)"
        }
    }

    /// Whether `text`, once known to be JSON, is an object.
    public static func isObject(_ text: String) -> Bool {
        text.utf8.first(where: { !Scanner.isSpace($0) }) == UInt8(ascii: "{")
    }

    static func position(of offset: Int, in bytes: UnsafeBufferPointer<UInt8>) -> String {
        var line = 1
        var lineStart = 0
        for index in 0..<min(offset, bytes.count) where bytes[index] == UInt8(ascii: "\n") {
            line += 1
            lineStart = index + 1
        }
        // Columns count characters (Unicode scalars), not bytes: continuation bytes are skipped.
        let column = bytes[lineStart..<min(offset, bytes.count)].count { $0 & 0xC0 != 0x80 } + 1
        return "line \(line), column \(column)"
    }

    private struct Scanner {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0
        /// Open containers, innermost last: true for an object.
        var open: [Bool] = []
        /// Where the last ',' was, to point at a trailing one.
        var comma = 0

        init(bytes: UnsafeBufferPointer<UInt8>) {
            self.bytes = bytes
        }

        enum Expecting { case value, valueOrClose, key, keyOrClose, colon, commaOrClose }

        static func isSpace(_ byte: UInt8) -> Bool {
            byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
        }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        static func shown(_ byte: UInt8) -> String {
            if (0x21..<0x7F).contains(byte) { return "'\(Character(Unicode.Scalar(byte)))'" }
            let hex = String(byte, radix: 16, uppercase: true)
            return "byte 0x" + (hex.count == 1 ? "0" + hex : hex)
        }

        /// The first problem (its reason and byte offset), or nil.
        mutating func scan() -> (String, Int)? {
            var expecting = Expecting.value
            while true {
                while let byte = current, Self.isSpace(byte) { index += 1 }
                guard let byte = current else {
                    if open.isEmpty && expecting == .commaOrClose { return nil }
                    return (bytes.isEmpty || (open.isEmpty && expecting == .value) ? "no JSON value" : "the text ends inside \(open.last == true ? "an object" : "an array")", index)
                }
                switch expecting {
                case .valueOrClose where byte == UInt8(ascii: "]"), .keyOrClose where byte == UInt8(ascii: "}"):
                    open.removeLast()
                    index += 1
                    expecting = .commaOrClose
                case .value, .valueOrClose:
                    if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                        guard open.count < maximumDepth else { return ("nesting deeper than \(maximumDepth) levels", index) }
                        open.append(byte == UInt8(ascii: "{"))
                        index += 1
                        expecting = byte == UInt8(ascii: "{") ? .keyOrClose : .valueOrClose
                        continue
                    }
                    if byte == UInt8(ascii: "]") && expecting == .value && open.last == false {
                        return ("a trailing comma", comma)
                    }
                    if let problem = scalar(startingWith: byte) { return problem }
                    expecting = .commaOrClose
                case .key, .keyOrClose:
                    guard byte == UInt8(ascii: "\"") else {
                        return byte == UInt8(ascii: "}") ? ("a trailing comma", comma) : ("\(Self.shown(byte)) where a quoted key should be", index)
                    }
                    if let problem = string() { return problem }
                    expecting = .colon
                case .colon:
                    guard byte == UInt8(ascii: ":") else { return ("\(Self.shown(byte)) where ':' should be", index) }
                    index += 1
                    expecting = .value
                case .commaOrClose:
                    guard let inObject = open.last else { return ("\(Self.shown(byte)) after the JSON value", index) }
                    if byte == UInt8(ascii: ",") {
                        comma = index
                        index += 1
                        expecting = inObject ? .key : .value
                    } else if byte == UInt8(ascii: inObject ? "}" : "]") {
                        open.removeLast()
                        index += 1
                    } else {
                        return ("\(Self.shown(byte)) where ',' or '\(inObject ? "}" : "]")' should be", index)
                    }
                }
            }
        }

        /// A string, number or literal; the scanner stands after it.
        mutating func scalar(startingWith byte: UInt8) -> (String, Int)? {
            switch byte {
            case UInt8(ascii: "\""): return string()
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return number()
            case UInt8(ascii: "t"): return literal("true")
            case UInt8(ascii: "f"): return literal("false")
            case UInt8(ascii: "n"): return literal("null")
            default: return ("\(Self.shown(byte)) where a value should be", index)
            }
        }

        mutating func literal(_ word: StaticString) -> (String, Int)? {
            let start = index
            let expected = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
            for byte in expected {
                guard current == byte else { return ("a word that is not a JSON value (\(word)?)", start) }
                index += 1
            }
            return nil
        }

        mutating func digits() -> Int {
            let start = index
            while let byte = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { index += 1 }
            return index - start
        }

        mutating func number() -> (String, Int)? {
            let start = index
            if current == UInt8(ascii: "-") { index += 1 }
            let integer = index
            if current == UInt8(ascii: "0") {
                index += 1
                if let byte = current, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { return ("a number with a leading zero", start) }
            } else if digits() == 0 {
                return ("a '-' without digits", start)
            }
            let integerDigits = index - integer
            var fraction = index..<index
            if current == UInt8(ascii: ".") {
                index += 1
                let digitsStart = index
                guard digits() > 0 else { return ("a number without digits after its '.'", start) }
                fraction = digitsStart..<index
            }
            var exponent = 0
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                index += 1
                let negative = current == UInt8(ascii: "-")
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { index += 1 }
                let digitsStart = index
                guard digits() > 0 else { return ("a number without digits in its exponent", start) }
                for byte in bytes[digitsStart..<index] {
                    exponent = min(exponent * 10 + Int(byte - UInt8(ascii: "0")), Self.exponentLimit)
                }
                if negative { exponent = -exponent }
            }
            return Self.fitsNumeric(integer: bytes[integer..<integer + integerDigits], fraction: bytes[fraction], exponent: exponent)
                ? nil : ("a number beyond the range PostgreSQL stores (numeric: 131,072 digits before the point, 16,383 after)", start)
        }

        /// PostgreSQL refuses an exponent this large (in magnitude) before looking at the digits.
        static let exponentLimit = Int(Int32.max) / 2

        /// Whether `numeric` holds the number: its first significant digit at most 131,071 places
        /// before the point (32,767 base-10,000 digits) and at most 16,383 digits after the point
        /// as written (`dscale`), as PostgreSQL's `numeric_in` decides.
        static func fitsNumeric(integer: Slice<UnsafeBufferPointer<UInt8>>, fraction: Slice<UnsafeBufferPointer<UInt8>>, exponent: Int) -> Bool {
            guard abs(exponent) < exponentLimit else { return false }
            guard fraction.count - exponent <= 16_383 else { return false }
            let zero = UInt8(ascii: "0")
            let magnitude: Int
            if let first = integer.firstIndex(where: { $0 != zero }) {
                magnitude = integer.endIndex - first - 1
            } else if let first = fraction.firstIndex(where: { $0 != zero }) {
                magnitude = fraction.startIndex - first - 1
            } else {
                return true
            }
            return magnitude + exponent <= 131_071
        }

        /// A string; the scanner stands on its opening quote, then after its closing one.
        mutating func string() -> (String, Int)? {
            let start = index
            index += 1
            while let byte = current {
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    return nil
                case UInt8(ascii: "\\"):
                    index += 1
                    switch current {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                         UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        index += 1
                    case UInt8(ascii: "u"):
                        let escape = index - 1
                        guard let unit = hex() else { return ("a \\u escape without four hex digits", escape) }
                        if unit == 0 { return ("\\u0000, which PostgreSQL cannot store in jsonb", escape) }
                        if (0xDC00...0xDFFF).contains(unit) { return ("a \\u escape of a low surrogate without a high one before it", escape) }
                        if (0xD800...0xDBFF).contains(unit) {
                            guard current == UInt8(ascii: "\\"), index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "u") else {
                                return ("a \\u escape of a high surrogate without a low one after it", escape)
                            }
                            index += 1
                            guard let low = hex(), (0xDC00...0xDFFF).contains(low) else {
                                return ("a \\u escape of a high surrogate without a low one after it", escape)
                            }
                        }
                    default:
                        return ("an escape that JSON does not have (\\\(current.map { Character(Unicode.Scalar($0)) } ?? " "))", index - 1)
                    }
                case 0..<0x20:
                    return ("a control character (\(Self.shown(byte))) inside a string: write it as an escape such as \\n or \\u001F", index)
                default:
                    index += 1
                }
            }
            return ("a string without its closing quote", start)
        }

        /// Four hex digits after `\u`; the scanner stands on the `u`, then after the digits.
        mutating func hex() -> UInt32? {
            index += 1
            guard index + 4 <= bytes.count else { return nil }
            var value: UInt32 = 0
            for _ in 0..<4 {
                guard let digit = Character(Unicode.Scalar(bytes[index])).hexDigitValue else { return nil }
                value = value << 4 | UInt32(digit)
                index += 1
            }
            return value
        }
    }
}
