import Foundation
import ResNetSupport

/// The zip structure of a file, checked before ZIPFoundation reads it. ZIPFoundation 0.9.20 converts the offsets it
/// reads from a file with `off_t(offset)` and adds sizes unchecked, so a ZIP64 record or entry claiming 2^63 bytes
/// stops the process with a trap (found by tools/fuzz.sh pickle). This walks the central directory the way
/// ZIPFoundation will (the last end-of-central-directory record, its ZIP64 twin, each entry and its local header)
/// and refuses what a model file never holds: ZIP64 sizes and offsets (entries of 4 GB and more), records that
/// disagree, anything outside the file. What passes has every offset and size below 2^32 and inside the file.
enum ZipCheck {
    /// What is wrong with the zip at `path`, or nil when ZIPFoundation can read it safely.
    static func problem(path: String) -> String? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else {
            return "cannot read the file: \(systemErrorMessage())"
        }
        return data.withUnsafeBytes { problem(in: $0) }
    }

    /// Throws, naming `path`, what `problem(path:)` finds.
    static func check(path: String) throws {
        if let problem = problem(path: path) { throw FileError(path, "a zip file that cannot be read: \(problem)") }
    }

    static let endSignature: UInt32 = 0x0605_4b50, zip64EndSignature: UInt32 = 0x0606_4b50
    static let zip64LocatorSignature: UInt32 = 0x0706_4b50, entrySignature: UInt32 = 0x0201_4b50
    static let localSignature: UInt32 = 0x0403_4b50
    /// A ResNet-18 checkpoint holds a few hundred entries.
    static let maxEntries = 100_000

    static func problem(in bytes: UnsafeRawBufferPointer) -> String? {
        let size = bytes.count
        func u16(_ at: Int) -> Int { Int(bytes.loadUnaligned(fromByteOffset: at, as: UInt16.self).littleEndian) }
        func u32(_ at: Int) -> Int { Int(bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self).littleEndian) }
        func u64(_ at: Int) -> UInt64 { bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self).littleEndian }
        func signature(_ at: Int, _ value: UInt32) -> Bool { at >= 0 && at + 4 <= size && u32(at) == Int(value) }

        // The end-of-central-directory record: the last one within reach of the end (22 bytes and a comment of at
        // most 65535), as ZIPFoundation scans backwards from the end.
        guard size >= 22 else { return "too short for a zip file" }
        guard let end = stride(from: size - 22, through: max(0, size - 22 - 65535), by: -1).first(where: { signature($0, endSignature) }) else {
            return "no end of central directory record (truncated?)"
        }
        let (entriesOnDisk, entries, directorySize, directoryStart) = (u16(end + 8), u16(end + 10), u32(end + 12), u32(end + 16))
        guard entriesOnDisk == entries, u16(end + 4) == 0, u16(end + 6) == 0 else { return "a multi-disk zip file" }
        guard entries != 0xFFFF, directorySize != 0xFFFF_FFFF, directoryStart != 0xFFFF_FFFF else {
            return "ZIP64 sizes (4 GB or 65535 entries and more): larger than a model file this tool reads"
        }
        // Its ZIP64 twin (torch.save writes one), where ZIPFoundation looks for it: its values are the ones
        // ZIPFoundation uses, so they must be these.
        let locator = end - 20, record = locator - 56
        if signature(locator, zip64LocatorSignature) || signature(record, zip64EndSignature) {
            guard signature(locator, zip64LocatorSignature), signature(record, zip64EndSignature),
                  u64(record + 24) == UInt64(entries), u64(record + 32) == UInt64(entries),
                  u64(record + 40) == UInt64(directorySize), u64(record + 48) == UInt64(directoryStart) else {
                return "its ZIP64 end of central directory disagrees with the end of central directory (damaged)"
            }
        }
        guard entries <= maxEntries else { return "more than \(maxEntries) entries" }
        let directoryEnd = directoryStart + directorySize
        guard directoryEnd <= end else { return "its central directory lies outside the file (truncated or damaged)" }

        var at = directoryStart
        for index in 0..<entries {
            guard at + 46 <= directoryEnd, signature(at, entrySignature) else { return "central directory entry \(index + 1) is damaged" }
            let (compressed, uncompressed, local) = (u32(at + 20), u32(at + 24), u32(at + 42))
            guard compressed != 0xFFFF_FFFF, uncompressed != 0xFFFF_FFFF, local != 0xFFFF_FFFF else {
                return "entry \(index + 1) has ZIP64 sizes (4 GB and more): larger than a model file this tool reads"
            }
            guard local + 30 <= size, signature(local, localSignature),
                  u32(local + 18) != 0xFFFF_FFFF, u32(local + 22) != 0xFFFF_FFFF,
                  local + 30 + u16(local + 26) + u16(local + 28) + compressed <= size else {
                return "entry \(index + 1)'s data lie outside the file (truncated or damaged)"
            }
            at += 46 + u16(at + 28) + u16(at + 30) + u16(at + 32)
            guard at <= directoryEnd else { return "central directory entry \(index + 1) is damaged" }
        }
        return nil
    }
}
