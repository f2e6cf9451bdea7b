import Crypto
import Foundation
import ResNetSupport

/// Content hashes for provenance.
public enum FileDigest {
    /// SHA-256 of a file as lowercase hex, read in 1 MB pieces so a large model is never held in memory.
    public static func sha256(path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw FileError(path, "cannot open: \(systemErrorMessage())") }
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let chunk: Data
            do { chunk = try handle.read(upToCount: 1 << 20) ?? Data() } catch {
                throw FileError(path, "read failed: \(error.localizedDescription)")
            }
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
