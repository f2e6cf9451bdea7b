import ResNetSupport

/// RFC 4180 CSV: fields separated by commas, records by CRLF or LF; a field holding a comma, quote,
/// CR or LF is quoted, with quotes doubled.
public enum CSV {
    /// Every record as its fields. A final line break is optional; blank lines are skipped.
    /// Throws on a quote inside an unquoted field, text after a closing quote, or an unterminated quote.
    public static func parse(_ text: String, path: String) throws -> [[String]] {
        var records: [[String]] = []
        var record: [String] = []
        var field: [UInt8] = []
        var line = 1
        let bytes = Array(text.utf8)
        var i = 0
        var inRecord = false          // distinguishes an empty last field from a blank line
        var fieldHasContent = false   // a quote may only open a field
        func endField() {
            record.append(String(decoding: field, as: UTF8.self))
            field.removeAll(keepingCapacity: true)
            fieldHasContent = false
        }
        func endRecord() {
            if inRecord {
                endField()
                records.append(record)
            }
            record = []
            inRecord = false
        }
        while i < bytes.count {
            let byte = bytes[i]
            switch byte {
            case UInt8(ascii: "\""):
                guard !fieldHasContent else {
                    throw FileError(path, "line \(line): a quote inside an unquoted field (quote the field and double the quote)")
                }
                let startLine = line
                i += 1
                var closed = false
                while i < bytes.count {
                    let c = bytes[i]
                    if c == UInt8(ascii: "\"") {
                        if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "\"") {
                            field.append(c)
                            i += 2
                            continue
                        }
                        closed = true
                        i += 1
                        break
                    }
                    if c == UInt8(ascii: "\n") { line += 1 }
                    field.append(c)
                    i += 1
                }
                guard closed else { throw FileError(path, "line \(startLine): a quoted field is never closed") }
                inRecord = true
                fieldHasContent = true
                if i < bytes.count && ![UInt8(ascii: ","), UInt8(ascii: "\n"), UInt8(ascii: "\r")].contains(bytes[i]) {
                    throw FileError(path, "line \(line): text after a closing quote")
                }
                continue
            case UInt8(ascii: ","):
                endField()
                inRecord = true
            case UInt8(ascii: "\r") where i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "\n"):
                i += 1
                endRecord()
                line += 1
            case UInt8(ascii: "\n"):
                endRecord()
                line += 1
            default:
                field.append(byte)
                inRecord = true
                fieldHasContent = true
            }
            i += 1
        }
        endRecord()
        return records
    }

    /// One field, quoted when it must be.
    public static func encodeField(_ field: String) -> String {
        guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" || $0 == "\r\n" }) else {
            return field
        }
        return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// One record, ending in "\n".
    public static func encodeRow(_ fields: [String]) -> String {
        fields.map(encodeField).joined(separator: ",") + "\n"
    }
}
