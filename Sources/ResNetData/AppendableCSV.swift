import Foundation
import ResNetSupport

/// A CSV file that grows by whole records, each `append` one `write`, so that after a crash the file is
/// complete records plus at most one torn record at the end; reopening with `.resume` cuts that torn
/// record off and returns the records already there, so a run can carry on where it stopped.
/// (Deliberately not an AtomicFile: the point is that finished work survives a crash.)
public final class AppendableCSV {
    public enum Existing {
        /// An existing file is an error (the message suggests --resume).
        case refuse
        /// An existing file is continued: torn tail removed, its records returned.
        case resume
        /// An existing file is replaced.
        case replace
    }

    public let path: String
    /// The data records (header excluded) the file already held when opened with `.resume`.
    public let existingRecords: [[String]]
    /// Bytes of a torn last record removed when resuming (0 when the file ended cleanly).
    public let removedTornBytes: Int
    private let fd: Int32

    public init(path: String, header: [String], existing: Existing) throws {
        self.path = path
        var info = stat()
        let exists = stat(path, &info) == 0
        if exists && (info.st_mode & S_IFMT) == S_IFDIR { throw FileError(path, "is a folder, not a CSV file") }
        if exists && existing == .refuse {
            throw FileError(path, "already exists (use --resume to continue it, or remove it)")
        }
        if exists && existing == .resume {
            fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC)
            guard fd >= 0 else { throw FileError(path, "cannot open for appending: \(systemErrorMessage())") }
            do {
                (existingRecords, removedTornBytes) = try Self.recover(fd, path: path, header: header)
            } catch {
                close(fd)
                throw error
            }
            if existingRecords.isEmpty && lseek(fd, 0, SEEK_END) == 0 { try write(CSV.encodeRow(header)) }
            return
        }
        let flags = O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | (existing == .replace ? O_TRUNC : O_EXCL)
        fd = open(path, flags, 0o644)
        guard fd >= 0 else { throw FileError(path, "cannot create: \(systemErrorMessage())") }
        existingRecords = []
        removedTornBytes = 0
        try write(CSV.encodeRow(header))
    }

    deinit { close(fd) }

    /// Appends records (already encoded, each ending in "\n") with a single write.
    public func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// Appends UTF-8 lines (each ending in "\n").
    public func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                throw FileError(path, "write failed: \(systemErrorMessage())")
            }
            offset += written
        }
    }

    /// Length of the prefix made of complete records: up to the last line break outside quotes.
    public static func completeRecordsLength(_ bytes: [UInt8]) -> Int {
        var quoted = false, end = 0
        for (index, byte) in bytes.enumerated() {
            if byte == UInt8(ascii: "\"") { quoted.toggle() }  // a doubled quote toggles twice
            else if byte == UInt8(ascii: "\n") && !quoted { end = index + 1 }
        }
        return end
    }

    /// Reads the file, cuts a torn tail, checks the header and every record's width.
    static func recover(_ fd: Int32, path: String, header: [String]) throws -> ([[String]], Int) {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw FileError(path, "cannot read: \(systemErrorMessage())") }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var filled = 0
        while filled < bytes.count {
            let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + filled, $0.count - filled, off_t(filled)) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { throw FileError(path, "cannot read: \(got < 0 ? systemErrorMessage() : "the file shrank")") }
            filled += got
        }
        // Everything is checked before a byte changes: a file that is not this run's output is left as it was.
        let complete = completeRecordsLength(bytes)
        let records = try CSV.parse(String(decoding: bytes[..<complete], as: UTF8.self), path: path)
        if let first = records.first {
            guard first == header else {
                throw FileError(path, "has the columns \(first.joined(separator: ",")) but this run writes \(header.joined(separator: ",")) (use the same options, or another output file); left unchanged")
            }
        } else if complete < bytes.count {
            // No complete line at all: only a torn header of ours may be cut.
            let tail = String(decoding: bytes[complete...], as: UTF8.self)
            guard CSV.encodeRow(header).hasPrefix(tail) else {
                throw FileError(path, "is not a CSV written by this command (its first line is not \(header.joined(separator: ","))); left unchanged")
            }
        }
        for (index, record) in records.enumerated() where record.count != header.count {
            throw FileError(path, "record \(index + 1) has \(record.count) fields, expected \(header.count); left unchanged")
        }
        if complete < bytes.count {
            guard ftruncate(fd, off_t(complete)) == 0 else {
                throw FileError(path, "cannot remove the torn last line: \(systemErrorMessage())")
            }
        }
        return (Array(records.dropFirst()), bytes.count - complete)
    }
}
