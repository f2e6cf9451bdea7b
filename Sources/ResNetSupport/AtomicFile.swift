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
        try moveIntoPlace(temp, path)
    }

    /// Creates the file through `write`, which receives a temporary path beside it (for libraries that open files by
    /// name, such as libtiff and libpng); renames into place on success, removes the temporary file on failure.
    public static func write(to path: String, byName write: (String) throws -> Void) throws {
        let temp = temporaryPath(for: path)
        do { try write(temp) } catch {
            unlink(temp)
            throw error
        }
        try moveIntoPlace(temp, path)
    }

    private static func moveIntoPlace(_ temp: String, _ path: String) throws {
        guard rename(temp, path) == 0 else {
            let message = systemErrorMessage()
            unlink(temp)
            throw FileError(path, "cannot move the finished file into place: \(message)")
        }
    }

    /// Removes temporary files that runs killed while writing `path` (or a file named `path.…`, such as a
    /// sidecar) left beside it: `.<name>.….<pid>.<random>.tmp` whose process no longer exists.
    public static func removeStaleTemporaries(for path: String) {
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        let prefix = ".\(url.lastPathComponent)."
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
        for name in names where name.hasPrefix(prefix) && name.hasSuffix(".tmp") {
            let parts = name.dropLast(4).split(separator: ".")
            guard parts.count >= 3, let pid = Int32(parts[parts.count - 2]), UInt32(parts[parts.count - 1]) != nil,
                  pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            unlink((folder as NSString).appendingPathComponent(name))
        }
    }

    /// Writes `data` atomically.
    public static func write(_ data: Data, to path: String, overwrite: Bool = true) throws {
        try write(to: path, overwrite: overwrite) { try $0.write(contentsOf: data) }
    }
}
