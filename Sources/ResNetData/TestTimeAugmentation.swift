import Foundation

/// Test-time augmentation: the network sees N symmetric views of each (preprocessed, cropped) image and the
/// logits are averaged over the views. The views are elements of the square's symmetry group, which keep a
/// patch's label (it depends on the centre region only):
///   1: identity; 2: + horizontal flip; 4: + vertical flip, 180° rotation;
///   8: all eight (the four rotations, each also flipped horizontally).
/// The views of a batch go through the network together, in calls of at most `maxBatch` images (so memory stays
/// that of one such batch) that never mix the geometries of a non-square input and its transpose.
public final class TestTimeAugmentation {
    /// One view: transpose first (for 90° rotations), then flip rows (vertical flip) and/or columns (horizontal).
    public struct View: Equatable, Sendable {
        public var transpose: Bool, flipRows: Bool, flipColumns: Bool

        public init(transpose: Bool, flipRows: Bool, flipColumns: Bool) {
            self.transpose = transpose
            self.flipRows = flipRows
            self.flipColumns = flipColumns
        }
    }

    public static let viewCounts = [1, 2, 4, 8]

    /// identity, h-flip, v-flip, 180°; then the transposed four (90° and 270° rotations, each with its h-flip).
    public static let allViews: [View] = [false, true].flatMap { t in
        [(false, false), (false, true), (true, false), (true, true)].map { View(transpose: t, flipRows: $0.0, flipColumns: $0.1) }
    }

    public let views: [View]
    private var scratch: [Float] = [], viewLogits: [Float] = []

    /// nil unless `viewCount` is 1, 2, 4 or 8.
    public init?(viewCount: Int) {
        guard Self.viewCounts.contains(viewCount) else { return nil }
        views = Array(Self.allViews.prefix(viewCount))
    }

    /// Writes `view` of NHWC images [count, height, width, 3] into `output` [count, height', width', 3]
    /// (height' and width' swapped when the view transposes).
    public static func apply(_ view: View, images: UnsafePointer<Float>, count: Int, height: Int, width: Int,
                             into output: UnsafeMutablePointer<Float>) {
        let outHeight = view.transpose ? width : height, outWidth = view.transpose ? height : width
        let imageSize = height * width * 3
        for n in 0..<count {
            let src = images + n * imageSize, dst = output + n * imageSize
            for y in 0..<outHeight {
                let ry = view.flipRows ? outHeight - 1 - y : y
                for x in 0..<outWidth {
                    let rx = view.flipColumns ? outWidth - 1 - x : x
                    // (ry, rx) in the transposed frame is (rx, ry) in the source.
                    let s = src + (view.transpose ? rx * width + ry : ry * width + rx) * 3
                    let d = dst + (y * outWidth + x) * 3
                    d[0] = s[0]; d[1] = s[1]; d[2] = s[2]
                }
            }
        }
    }

    /// The mean over the views of the logits that `classify(images, count, height, width, logits)` computes
    /// (logits [count, classes] for images [count, height, width, 3]); writes logits [count, classes].
    /// `classify` is called on at most `maxBatch` images at a time.
    public func meanLogits(images: UnsafePointer<Float>, count: Int, height: Int, width: Int, classes: Int,
                           maxBatch: Int = .max, into logits: UnsafeMutablePointer<Float>,
                           classify: (UnsafePointer<Float>, Int, Int, Int, UnsafeMutablePointer<Float>) throws -> Void) rethrows {
        precondition(maxBatch >= 1, "maxBatch must be positive")
        guard views.count > 1 else { return try classify(images, count, height, width, logits) }
        let imageSize = height * width * 3
        if scratch.count < views.count * count * imageSize { scratch = [Float](repeating: 0, count: views.count * count * imageSize) }
        if viewLogits.count < views.count * count * classes { viewLogits = [Float](repeating: 0, count: views.count * count * classes) }
        try scratch.withUnsafeMutableBufferPointer { batch in
            try viewLogits.withUnsafeMutableBufferPointer { out in
                // views[0..<4] keep the geometry, views[4...] transpose it: one group for square inputs, else two.
                let groups = height == width || views.count <= 4 ? [0..<views.count] : [0..<4, 4..<views.count]
                for range in groups {
                    for v in range {
                        Self.apply(views[v], images: images, count: count, height: height, width: width,
                                   into: batch.baseAddress! + v * count * imageSize)
                    }
                    let (h, w) = views[range.lowerBound].transpose ? (width, height) : (height, width)
                    let first = range.lowerBound * count, end = range.upperBound * count
                    for start in stride(from: first, to: end, by: maxBatch) {
                        try classify(batch.baseAddress! + start * imageSize, min(maxBatch, end - start), h, w,
                                     out.baseAddress! + start * classes)
                    }
                }
                for i in 0..<(count * classes) {
                    var sum: Float = 0
                    for v in 0..<views.count { sum += out[v * count * classes + i] }
                    logits[i] = sum / Float(views.count)
                }
            }
        }
    }
}
