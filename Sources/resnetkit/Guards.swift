import Foundation
import ResNetSupport

/// The per-image pixel budget of a run: `--max-image-pixels` when given (within `Limits.maxImagePixels`),
/// otherwise the default that lets a batch of `batchSize` such images fit in about 1 GB.
enum ImageBudget {
    static func resolve(_ option: Int?, batchSize: Int) throws -> Int {
        guard let option else { return Limits.defaultPixelBudget(batchSize: batchSize) }
        try Limits.check(option, 1...Limits.maxImagePixels, "--max-image-pixels")
        return option
    }
}

extension Console {
    /// `--quiet` on a command whose summary goes to stdout: the summary is dropped too, errors still reach stderr.
    static func silenceStandardOutput() {
        fflush(stdout)
        let null = open("/dev/null", O_WRONLY | O_CLOEXEC)
        if null >= 0 { dup2(null, 1); close(null) }
    }
}
