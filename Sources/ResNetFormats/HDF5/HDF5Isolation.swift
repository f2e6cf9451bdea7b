import Foundation
import ResNetModel
import ResNetSupport

/// Reads HDF5 files, and `.keras` archives (an HDF5 file inside a zip), in a child process. libhdf5 (Debian's 1.10)
/// can crash on a damaged file inside its own B-tree code, where no check of ours can reach; run in a child, such a
/// crash becomes a one-line error of the command instead of a signal. The command-line program sets `executable`
/// (itself) and calls `runChildIfRequested()` first thing; library users read in-process as before.
public enum HDF5Isolation {
    public nonisolated(unsafe) static var executable: String?
    static let pathVariable = "RESNETKIT_HDF5_CHILD_INPUT"
    static let outVariable = "RESNETKIT_HDF5_CHILD_OUTPUT"
    static let classesVariable = "RESNETKIT_HDF5_CHILD_CLASSES"
    static let kindVariable = "RESNETKIT_HDF5_CHILD_KIND"
    static let importKey = "resnetkit.hdf5-import"

    /// What the child reads: an HDF5 file, or a `.keras` archive.
    enum Kind: String {
        case hdf5, keras

        func importModel(path: String, options: ImportOptions) throws -> ImportedModel {
            switch self {
            case .hdf5: return try HDF5Importer.importModel(path: path, options: options)
            case .keras: return try KerasArchive.importModel(path: path, options: options)
            }
        }
    }

    /// What the importer said besides the weights, carried through the checkpoint's metadata.
    struct Account: Codable {
        var sourceFormat: String
        var producer: String?
        var batchNormFolded: Bool
        var notes: [String]
    }

    /// In the child (the variables are set): imports, writes the result, and exits (0, or 1 with the problem on
    /// stderr). Otherwise returns at once.
    public static func runChildIfRequested() {
        let environment = ProcessInfo.processInfo.environment
        guard let path = environment[pathVariable], let out = environment[outVariable] else { return }
        limitMemory()
        do {
            let classes = try environment[classesVariable].map { try JSONDecoder().decode([String].self, from: Data($0.utf8)) }
            let kind = Kind(rawValue: environment[kindVariable] ?? "") ?? .hdf5
            let imported = try kind.importModel(path: path, options: ImportOptions(classNames: classes))
            var checkpoint = imported.checkpoint
            let account = Account(sourceFormat: imported.sourceFormat, producer: imported.producer,
                                  batchNormFolded: imported.batchNormFolded, notes: imported.notes)
            checkpoint.extra[importKey] = String(decoding: try JSONEncoder().encode(account), as: UTF8.self)
            try checkpoint.save(path: out)
            exit(0)
        } catch {
            let problem = (error as? FileError).map { $0.path == path ? $0.problem : $0.description } ?? "\(error)"
            FileHandle.standardError.write(Data(problem.utf8))
            exit(1)
        }
    }

    /// Memory the child may allocate beyond what it holds at start: libhdf5 allocates what a damaged superblock or
    /// object header claims (gigabytes) before it checks it against the file; with the limit the allocation
    /// fails and libhdf5 reports an error.
    static let childMemoryBytes = 1 << 30

    static func limitMemory() {
        // VmData: the private writable memory the process already uses (libraries, OpenBLAS buffers).
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmData:") }
        let kilobytes = line.flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
        let bytes = rlim_t(kilobytes * 1024 + childMemoryBytes)
        var limit = rlimit(rlim_cur: bytes, rlim_max: bytes)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_DATA.rawValue), &limit)
    }

    /// Imports `path` (of `kind`) in a child process running `executable`.
    static func importModel(path: String, kind: Kind, options: ImportOptions, executable: String) throws -> ImportedModel {
        let out = (NSTemporaryDirectory() as NSString).appendingPathComponent("resnetkit-hdf5-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).safetensors")
        defer { unlink(out) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = []
        var environment = ProcessInfo.processInfo.environment
        environment[pathVariable] = path
        environment[outVariable] = out
        environment[kindVariable] = kind.rawValue
        environment["SWIFT_BACKTRACE"] = "enable=no"  // a crash is reported here, in one line
        if let names = options.classNames {
            environment[classesVariable] = String(decoding: try JSONEncoder().encode(names), as: UTF8.self)
        }
        process.environment = environment
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        do { try process.run() } catch {
            throw FileError(path, "cannot start the HDF5 reader: \(error.localizedDescription)")
        }
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationReason == .uncaughtSignal {
            throw FileError(path, "the HDF5 library crashed reading this file (signal \(process.terminationStatus)): it is damaged")
        }
        guard process.terminationStatus == 0 else {
            throw FileError(path, message.isEmpty ? "the HDF5 reader failed (status \(process.terminationStatus))" : message)
        }
        var checkpoint = try Checkpoint.load(path: out)
        guard let text = checkpoint.extra.removeValue(forKey: importKey),
              let account = try? JSONDecoder().decode(Account.self, from: Data(text.utf8)) else {
            throw FileError(path, "the HDF5 reader returned no account of the import")
        }
        return ImportedModel(checkpoint: checkpoint, sourceFormat: account.sourceFormat, producer: account.producer,
                             batchNormFolded: account.batchNormFolded, notes: account.notes)
    }
}
