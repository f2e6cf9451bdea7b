import COpenBLAS
import Dispatch

/// Worker threads for the memory-bound passes between GEMMs (im2col, epilogues).
public enum Parallelism {
    nonisolated(unsafe) public static var threads = 2

    /// Runs `body` over `0..<count` split into at most `threads` contiguous ranges; serial when small.
    @inline(__always)
    static func forEachRange(_ count: Int, minimumPerThread: Int, threads: Int = threads,
                             _ body: (Range<Int>) -> Void) {
        let parts = max(1, min(threads, count / max(1, minimumPerThread)))
        if parts == 1 { body(0..<count); return }
        DispatchQueue.concurrentPerform(iterations: parts) { part in
            body(count * part / parts ..< count * (part + 1) / parts)
        }
    }
}

/// The lanes that training work is split across: persistent threads (`Parallelism.threads` of them, the
/// calling thread included). Training runs on one thread: not reentrant.
public enum TrainingLanes {
    nonisolated(unsafe) private static var lanes = LaneThreads()

    /// Runs `body(lane)` for every lane in `0..<count` at once: for training work done outside this module (the
    /// bf16 convolutions), so that the whole step runs on one set of threads and no other set spins waiting for
    /// its next job beside it.
    public static func run(_ count: Int, _ body: (Int) -> Void) { lanes.run(count, body) }

    nonisolated(unsafe) private static var workspaces: [FloatBuffer] = []

    /// Lane `lane`'s scratch floats, shared by all the work that lane runs (one job after another: training runs on
    /// one thread), so that each layer needs none of its own. Ask for it when building a lane's work, not inside `run`.
    public static func workspace(_ lane: Int) -> FloatBuffer {
        while workspaces.count <= lane { workspaces.append(FloatBuffer()) }
        return workspaces[lane]
    }

    /// Runs `part(range)` over `0..<count` split into contiguous ranges of at least `minimum`, one per lane.
    static func forEachRange(_ count: Int, minimum: Int, _ part: (Range<Int>) -> Void) {
        forEachPart(count, minimum: minimum) { _, range in part(range) }
    }

    /// The same, telling each part its lane (for per-lane scratch memory).
    static func forEachPart(_ count: Int, minimum: Int, _ part: (_ lane: Int, Range<Int>) -> Void) {
        let parts = max(1, min(Parallelism.threads, count / max(1, minimum)))
        lanes.run(parts) { lane in part(lane, count * lane / parts ..< count * (lane + 1) / parts) }
    }
}

/// GEMMs for the training layers, split across the training lanes, each part one single-threaded OpenBLAS
/// call (the reason is in `InferencePlan`). The m×n output is split along its larger side: every lane reads
/// the whole operand along the other side, so that should be the smaller one (layer4's forward at batch 16
/// is 64 pixels × 512 channels: split by pixels, both lanes would pack all 9 MB of its weight).
enum SplitGEMM {
    /// Whether an m×n output is split by rows (else by columns).
    static func splitsRows(_ m: Int, _ n: Int) -> Bool { m >= n }

    /// Runs `part(rows, columns)` over the parts of an m×n output, one per lane.
    private static func split(_ m: Int, _ n: Int, _ part: (Range<Int>, Range<Int>) -> Void) {
        if splitsRows(m, n) {
            onLanes(m) { part($0, 0..<n) }
        } else {
            onLanes(n) { part(0..<m, $0) }
        }
    }

    /// Runs `part(range)` over `0..<count` split across the lanes, OpenBLAS single-threaded meanwhile: for GEMMs
    /// split by hand (and work done with them in the same lane).
    static func onLanes(_ count: Int, minimum: Int = 64, _ part: (Range<Int>) -> Void) {
        onLanes(count, minimum: minimum) { _, range in part(range) }
    }

    /// The same, telling each part its lane.
    static func onLanes(_ count: Int, minimum: Int, _ part: (_ lane: Int, Range<Int>) -> Void) {
        let blasThreads = openblas_get_num_threads()
        if blasThreads != 1 { openblas_set_num_threads(1) }
        defer { if blasThreads != 1 { openblas_set_num_threads(blasThreads) } }
        TrainingLanes.forEachPart(count, minimum: minimum, part)
    }

    /// c[m, n] = a[m, k] · b[n, k]ᵀ + beta · c.
    static func abT(_ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, _ lda: Int,
                    _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int, beta: Float = 0) {
        split(m, n) { rows, columns in
            gemmABt(rows.count, columns.count, k, a + rows.lowerBound * lda, lda, b + columns.lowerBound * ldb, ldb,
                    c + rows.lowerBound * ldc + columns.lowerBound, ldc, beta: beta)
        }
    }

    /// c[m, n] = a[m, k] · b[k, n] + beta · c.
    static func ab(_ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, _ lda: Int,
                   _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int, beta: Float = 0) {
        split(m, n) { rows, columns in
            gemmAB(rows.count, columns.count, k, a + rows.lowerBound * lda, lda, b + columns.lowerBound, ldb,
                   c + rows.lowerBound * ldc + columns.lowerBound, ldc, beta: beta)
        }
    }

    /// c[m, n] = a[k, m]ᵀ · b[k, n] + beta · c.
    static func aTb(_ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, _ lda: Int,
                    _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int, beta: Float = 0) {
        split(m, n) { rows, columns in
            gemmAtB(rows.count, columns.count, k, a + rows.lowerBound, lda, b + columns.lowerBound, ldb,
                    c + rows.lowerBound * ldc + columns.lowerBound, ldc, beta: beta)
        }
    }
}
