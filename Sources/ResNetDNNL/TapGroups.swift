import CKernels
import ResNetModel

/// A convolution's (output pixel p, input pixel q) pairs on one input size, grouped by the tap t that joins them, in
/// tap order: what the by-taps layers (`TapwiseBF16` for inference, `BF16PairwisePlan` for training) stack, multiply
/// with one matmul per tap and add back to their pixels.
struct TapGroups {
    /// One tap's pairs, and the block of the tap-ordered stack its first pair's rows start at.
    struct Group {
        let tap: Int
        let pixels: [(p: Int, q: Int)]
        let first: Int
    }
    let groups: [Group]
    /// Taps no pair uses (a weight gradient of zeros).
    let unusedTaps: [Int]
    /// All pairs: blocks in the stack.
    let pairs: Int
    /// The groups' sizes (one matmul shape each).
    var sizes: Set<Int> { Set(groups.map(\.pixels.count)) }

    /// Maps of at most this many output pixels go by taps: with more, the stacks grow towards an im2col and the
    /// convolutions win (at 16, layer3 on 49x49 crops, training measured no better).
    static let maximumOutputPixels = 9

    init(_ s: ConvShape, _ side: (Int, Int)) {
        var byTap = [[(p: Int, q: Int)]](repeating: [], count: s.kernel * s.kernel)
        for pair in s.taps(side) { byTap[pair.t].append((pair.p, pair.q)) }
        var groups: [Group] = [], stacked = 0
        for (tap, pixels) in byTap.enumerated() where !pixels.isEmpty {
            groups.append(Group(tap: tap, pixels: pixels, first: stacked))
            stacked += pixels.count
        }
        self.groups = groups
        unusedTaps = byTap.indices.filter { byTap[$0].isEmpty }
        pairs = stacked
    }

    /// Copies row `pixel(pair)` of each image in `images` from `source` (images of `pixelsPerImage` rows of
    /// `rowBytes`) into block `first + j` of `target`, `batch` rows a block: pair j of every group.
    func stack(_ source: UnsafeRawPointer, pixelsPerImage: Int, rowBytes: Int, images: Range<Int>, batch: Int,
               into target: UnsafeMutableRawPointer, _ pixel: ((p: Int, q: Int)) -> Int) {
        for group in groups {
            for (j, pair) in group.pixels.enumerated() {
                for image in images {
                    (target + ((group.first + j) * batch + image) * rowBytes)
                        .copyMemory(from: source + (image * pixelsPerImage + pixel(pair)) * rowBytes, byteCount: rowBytes)
                }
            }
        }
    }

    /// Adds block j of `products` (`batch` rows of `length` floats) to pixel `pixel(pair j)` of each image of
    /// `target` (images of `pixelsPerImage` pixels, `stride` floats apart): a group's products back to its pixels.
    func add(_ group: Group, products: UnsafePointer<Float>, length: Int, batch: Int, into target: UnsafeMutablePointer<Float>,
             pixelsPerImage: Int, stride: Int, _ pixel: ((p: Int, q: Int)) -> Int) {
        for (j, pair) in group.pixels.enumerated() {
            for image in 0..<batch {
                resnetkit_add_rows_f32(products + (j * batch + image) * length, length,
                                       target + (image * pixelsPerImage + pixel(pair)) * stride)
            }
        }
    }
}
