import Foundation

/// Which part of the images this process handles: shard `index` of `count` (0-based), chosen by a stable
/// hash of the image id (64-bit FNV-1a of its UTF-8 bytes), so every process, machine and run agrees.
public struct Shard: Equatable, Sendable, CustomStringConvertible {
    public var index: Int
    public var count: Int

    public init(index: Int, count: Int) {
        self.index = index
        self.count = count
    }

    public static let all = Shard(index: 0, count: 1)

    public var description: String { "\(index)/\(count)" }

    /// 64-bit FNV-1a.
    public static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }

    public func contains(id: String) -> Bool {
        count == 1 || Int(Self.fnv1a(id) % UInt64(count)) == index
    }

    public struct SpecError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Parses `I/N` (0 ≤ I < N), or `auto`: from `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job) with the
    /// count from `shardCount` or `RESNETKIT_SHARD_COUNT`, or from a Slurm job array
    /// (`SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`).
    public static func parse(_ spec: String, shardCount: Int? = nil,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Shard {
        func number(_ text: String?, _ what: String) throws -> Int {
            guard let text, let value = Int(text.trimmingCharacters(in: .whitespaces)) else {
                throw SpecError(description: "--shard auto: \(what) is \(text.map { "'\($0)', not a number" } ?? "not set")")
            }
            return value
        }
        let shard: Shard
        if spec == "auto" {
            if let index = environment["JOB_COMPLETION_INDEX"] {
                let count = try shardCount ?? number(environment["RESNETKIT_SHARD_COUNT"],
                                                     "the shard count (--shard-count N or RESNETKIT_SHARD_COUNT)")
                shard = Shard(index: try number(index, "JOB_COMPLETION_INDEX"), count: count)
            } else if let task = environment["SLURM_ARRAY_TASK_ID"] {
                let first = try environment["SLURM_ARRAY_TASK_MIN"].map { try number($0, "SLURM_ARRAY_TASK_MIN") } ?? 0
                let (index, overflow) = try number(task, "SLURM_ARRAY_TASK_ID").subtractingReportingOverflow(first)
                guard !overflow else { throw SpecError(description: "--shard auto: SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN is out of range") }
                shard = Shard(index: index,
                              count: try shardCount ?? number(environment["SLURM_ARRAY_TASK_COUNT"], "SLURM_ARRAY_TASK_COUNT"))
            } else {
                throw SpecError(description: "--shard auto needs JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm job array)")
            }
        } else {
            let parts = spec.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]) else {
                throw SpecError(description: "--shard must be I/N (e.g. 0/4) or auto, not '\(spec)'")
            }
            shard = Shard(index: index, count: count)
        }
        guard shard.count >= 1, (0..<shard.count).contains(shard.index) else {
            throw SpecError(description: "shard \(shard.index)/\(shard.count) does not exist (shards are 0…N−1 of N ≥ 1)")
        }
        return shard
    }
}
