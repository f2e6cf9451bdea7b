import Foundation

/// Keeps a command's outputs from destroying files: checked before any work is done, an output may not be one of
/// the command's inputs (the same file by device and inode, through links), two outputs may not be one file, an
/// existing output is replaced only when the command allows it (`--force`, `--resume`), and every output being
/// written is locked (`flock`) so that a second process writing it is refused instead of interleaving.
public enum OutputGuard {
    /// A file the command will write, with the option that names it (for messages).
    public struct Output {
        public var path: String
        public var option: String
        /// Whether an existing file may be replaced or continued (`--force`, `--resume`, or the command's design).
        public var mayExist: Bool
        public init(_ path: String, option: String, mayExist: Bool) {
            self.path = path
            self.option = option
            self.mayExist = mayExist
        }
    }

    /// A file or folder the command reads, with what it is (for messages).
    public struct Input {
        public var path: String
        public var role: String
        public init(_ path: String, role: String) {
            self.path = path
            self.role = role
        }
    }

    /// Device and inode of the file `path` names, following links; nil when there is none.
    public static func identity(_ path: String) -> [UInt64]? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return [UInt64(info.st_dev), UInt64(info.st_ino)]
    }

    /// The path with its folder's links resolved (the file itself need not exist), for comparing outputs that
    /// do not exist yet.
    public static func canonical(_ path: String) -> String {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let folder = url.deletingLastPathComponent().path
        guard let resolved = realpath(folder, nil) else { return url.path }
        defer { free(resolved) }
        return (String(cString: resolved) as NSString).appendingPathComponent(url.lastPathComponent)
    }

    static func isFolder(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// Refuses, with one line naming the file and the options, an output that is an input, two outputs that are
    /// one file, an output that is a folder, and an existing output that may not be replaced (`forceHint`
    /// names what would allow it). Call before doing any work.
    public static func check(outputs: [Output], inputs: [Input], forceHint: String = "use --force to replace it") throws {
        for (index, output) in outputs.enumerated() {
            let id = identity(output.path)
            if isFolder(output.path) { throw FileError(output.path, "is a folder; \(output.option) needs a file name") }
            for input in inputs {
                let same = id != nil ? identity(input.path) == id : canonical(input.path) == canonical(output.path)
                if same {
                    throw FileError(output.path, "\(output.option) is the same file as the \(input.role); an output never replaces an input (choose another name)")
                }
            }
            for other in outputs[..<index] {
                let same = id != nil ? identity(other.path) == id : canonical(other.path) == canonical(output.path)
                if same {
                    throw FileError(output.path, "\(other.option) and \(output.option) name the same file (choose different names)")
                }
            }
            if id != nil && !output.mayExist {
                throw FileError(output.path, "already exists (\(forceHint))")
            }
        }
    }

    /// Locks every output for writing (see `OutputLock`) and removes temporary files that a killed run left
    /// beside them. Keep the returned locks until the outputs are complete.
    public static func lock(_ outputs: [Output]) throws -> [OutputLock] {
        try outputs.map { try OutputLock.acquire(path: $0.path, option: $0.option) }
    }
}

/// An advisory lock (`flock`) on an output file, held through a hidden lock file beside it
/// (`.<name>.lock`, removed on release): outputs written by rename change inode, so the lock cannot be on the
/// output itself. A second writer of the same output is refused with the first writer's process id.
public final class OutputLock {
    public let path: String
    let lockPath: String
    private var fd: Int32

    init(path: String, lockPath: String, fd: Int32) {
        self.path = path
        self.lockPath = lockPath
        self.fd = fd
    }

    public static func lockPath(for path: String) -> String {
        let url = URL(fileURLWithPath: path)
        return url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).lock").path
    }

    /// Takes the lock on `path` (whose folder must exist) without waiting; throws when another process holds it.
    public static func acquire(path: String, option: String) throws -> OutputLock {
        let lockPath = lockPath(for: path)
        // A lock file unlinked by its previous holder between our open and our flock is not the live one:
        // retry until the locked file is the one the name points at.
        for _ in 0..<100 {
            let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw FileError(path, "cannot write here (\(option)): \(systemErrorMessage())")
            }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                let code = errno
                var buffer = [UInt8](repeating: 0, count: 32)
                let got = pread(fd, &buffer, buffer.count, 0)
                close(fd)
                let holder = got > 0 ? String(decoding: buffer[..<got], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : ""
                if code == EWOULDBLOCK {
                    throw FileError(path, "is being written by another process\(holder.isEmpty ? "" : " (pid \(holder))"); wait for it to finish or choose another \(option)")
                }
                throw FileError(path, "cannot lock for writing (\(option)): \(systemErrorMessage(code))")
            }
            var held = stat(), named = stat()
            if fstat(fd, &held) == 0, stat(lockPath, &named) == 0, held.st_ino == named.st_ino, held.st_dev == named.st_dev {
                let pid = Array("\(getpid())\n".utf8)
                _ = ftruncate(fd, 0)
                _ = pwrite(fd, pid, pid.count, 0)
                AtomicFile.removeStaleTemporaries(for: path)
                return OutputLock(path: path, lockPath: lockPath, fd: fd)
            }
            close(fd)
        }
        throw FileError(path, "cannot lock for writing (\(option)): the lock file keeps changing")
    }

    /// Removes the lock file and releases the lock (also done when the lock is dropped, and by the kernel when
    /// the process dies: a lock file left by a killed run is taken over by the next one).
    public func release() {
        guard fd >= 0 else { return }
        unlink(lockPath)
        close(fd)
        fd = -1
    }

    deinit { release() }
}
