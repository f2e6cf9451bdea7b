import Glibc

/// Every size and threshold the engine's speed depends on, in one place. Cache-dependent sizes are read from
/// the CPU at run time (glibc's sysconf, which asks the CPU itself), never tuned to one machine.
public enum EngineTuning {
    /// Per-core L2, in bytes (1 MB where the CPU does not say).
    public static let level2Bytes: Int = {
        let reported = sysconf(Int32(_SC_LEVEL2_CACHE_SIZE))
        return reported >= 64 << 10 ? reported : 1 << 20
    }()

    static var level2Floats: Int { level2Bytes / MemoryLayout<Float>.size }

    /// Upper bound on one column matrix (im2col, gathered taps), in floats: larger batches go in chunks, so
    /// memory stays flat whatever the batch size.
    static let columnBudgetFloats = 2 << 20

    /// im2col rows per chunk: a column matrix about the size of L2 per lane, but at least `minimumChunkRows`
    /// rows so that packing the weights once per chunk stays cheap against the multiplies.
    static let minimumChunkRows = 512

    static func im2colChunkRows(rows: Int, patch: Int, budget: Int, lanes: Int) -> Int {
        max(1, min(rows, budget / patch, lanes * max(level2Floats / patch, minimumChunkRows)))
    }

    /// Winograd's transformed input and products (V and M) per chunk of tiles: about twice L2. Each of the 16
    /// GEMMs streams its slice of V once, so a chunk need not fit L2; it must amortise packing 16 weight blocks.
    static var winogradChunkFloats: Int { 2 * level2Floats }

    /// Tiles per chunk of oneDNN's bf16 Winograd (ResNetDNNL), at most: a chunk's V (16·tiles·Cin bf16) half of L2,
    /// at least 64 tiles so that each matmul has rows enough. Measured on a 1 MB L2 (Zen 4), one lane: within a
    /// few percent of the best chunk for every layer of ResNet-18 at 49x49 and 96x96; with fewer rows the matmul's
    /// efficiency drops (32 tiles: 10–20 % slower), with more V and M leave L2.
    public static func bf16WinogradTiles(inChannels: Int) -> Int {
        max(bf16WinogradMinimumTiles, level2Bytes / (2 * 16 * 2 * inChannels))
    }
    public static let bf16WinogradMinimumTiles = 64

    /// Winograd pays when a lane has at least Cout / this many 2x2 tiles: with fewer, packing the 16 transformed
    /// weight matrices for so few rows costs more than the multiplies saved.
    public static let winogradOutputChannelsPerTile = 16

    /// Taps are used when at most this share of im2col's (pixel, tap) products reads inside the image: im2col's
    /// one long GEMM (K = k²·Cin) runs closer to peak than k² short ones, so taps pay only where padding is a
    /// large part of the work.
    public static let maximumTapUsefulFraction = 0.75

    /// Work below which a pass is not split across threads: a hand-off costs about as much as copying this
    /// many floats (im2col rows, gathers) or running this many through an elementwise pass.
    static let copyFloatsPerPart = 16_384
    static let elementwiseFloatsPerPart = 32_768
    /// Elementwise passes over whole activations or parameter sets (ReLU masks, gradient sums, AdamW).
    static let bulkFloatsPerPart = 65_536
    /// Max-pool output pixels per part (each reads nine input pixels of every channel).
    static let minimumPoolPixelsPerPart = 256
    /// GEMMs split by output (or input) channels give each lane at least this many.
    static let minimumColumnsPerLane = 64

    /// How long an idle lane thread spins for its next job before it sleeps: waking a sleeping thread costs
    /// more than the gaps between one layer's hand-offs and the next's.
    static let laneSpinNanoseconds: UInt64 = 200_000
}
