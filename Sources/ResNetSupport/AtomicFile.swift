import Foundation

/// Writes a file so that readers only ever see the old content or the complete new one:
/// data go to a temporary file in the same folder, are flushed, and the temporary file is renamed.
public enum AtomicFile {
    /// Temporary name beside `path` (same file system, so the rename is atomic).
    public static func temporaryPath(for path: String) -> String {
        let url = URL(fileURLWithPath: path)
        let name = ".\(url.lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        return url.deletingLastPathComponent().appendingPathComponent(name).path
    }

    /// Creates the file through `write`, which receives an open handle; renames into place on success,
    /// removes the temporary file on failure. Refuses to replace an existing file unless `overwrite`.
    public static func write(to path: String, overwrite: Bool = true, _ write: (FileHandle) throws -> Void) throws {
        if !overwrite && FileManager.default.fileExists(atPath: path) {
            throw FileError(path, "already exists (use --force to replace it)")
        }
        let temp = temporaryPath(for: path)
        guard FileManager.default.createFile(atPath: temp, contents: nil) else {
            throw FileError(path, "cannot create a file in this folder: \(systemErrorMessage())")
        }
        do {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temp))
            defer { try? handle.close() }
            try write(handle)
            try handle.synchronize()
        } catch {
            unlink(temp)
            if let fileError = error as? FileError { throw fileError }
            throw FileError(path, "write failed: \(error.localizedDescription)")
        }
        guard rename(temp, path) == 0 else {
            let message = systemErrorMessage()
            unlink(temp)
            throw FileError(path, "cannot move the finished file into place: \(message)")
        }
    }

    /// Writes `data` atomically.
    public static func write(_ data: Data, to path: String, overwrite: Bool = true) throws {
        try write(to: path, overwrite: overwrite) { try $0.write(contentsOf: data) }
    }
}
