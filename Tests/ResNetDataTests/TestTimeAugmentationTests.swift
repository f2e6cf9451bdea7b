import ResNetData
import XCTest

final class TestTimeAugmentationTests: XCTestCase {
    /// One image [height, width, 3] whose pixel (y, x) holds 100·y + x in every channel.
    func image(height: Int, width: Int) -> [Float] {
        (0..<height).flatMap { y in (0..<width).flatMap { x in [Float](repeating: Float(100 * y + x), count: 3) } }
    }

    func view(_ v: TestTimeAugmentation.View, _ pixels: [Float], height: Int, width: Int) -> [[Float]] {
        var out = [Float](repeating: -1, count: pixels.count)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { TestTimeAugmentation.apply(v, images: src.baseAddress!, count: 1, height: height, width: width, into: $0.baseAddress!) }
        }
        let (h, w) = v.transpose ? (width, height) : (height, width)
        return (0..<h).map { y in (0..<w).map { x in out[(y * w + x) * 3] } }
    }

    func testViewsAreTheFlipsAndRotations() {
        let pixels = image(height: 2, width: 3), views = TestTimeAugmentation.allViews
        XCTAssertEqual(view(views[0], pixels, height: 2, width: 3), [[0, 1, 2], [100, 101, 102]], "identity")
        XCTAssertEqual(view(views[1], pixels, height: 2, width: 3), [[2, 1, 0], [102, 101, 100]], "horizontal flip")
        XCTAssertEqual(view(views[2], pixels, height: 2, width: 3), [[100, 101, 102], [0, 1, 2]], "vertical flip")
        XCTAssertEqual(view(views[3], pixels, height: 2, width: 3), [[102, 101, 100], [2, 1, 0]], "180° rotation")
        XCTAssertEqual(view(views[4], pixels, height: 2, width: 3), [[0, 100], [1, 101], [2, 102]], "transpose")
        // torch.rot90(x, 1) (counter-clockwise): the last column becomes the first row.
        let rotations = views[4...].map { view($0, pixels, height: 2, width: 3) }
        XCTAssertTrue(rotations.contains([[2, 102], [1, 101], [0, 100]]), "90° counter-clockwise")
        XCTAssertTrue(rotations.contains([[100, 0], [101, 1], [102, 2]]), "90° clockwise")
        let square = image(height: 3, width: 3)
        XCTAssertEqual(Set(views.map { view($0, square, height: 3, width: 3) }).count, 8, "eight distinct views")
        XCTAssertEqual(TestTimeAugmentation(viewCount: 4)?.views, Array(views.prefix(4)))
        XCTAssertNil(TestTimeAugmentation(viewCount: 3))
    }

    /// The mean over views equals classifying each view alone and averaging, for square and non-square inputs,
    /// and the views go through the network in one batch (two when a non-square input is transposed), or in
    /// batches of at most `maxBatch` images.
    func testMeanLogitsAverageTheViewsInOneOrTwoBatches() {
        for (height, width, maxBatch, calls) in [(3, 3, Int.max, 1), (2, 3, Int.max, 2), (3, 3, 3, 6), (2, 3, 3, 6)] {
            let count = 2, classes = 2
            let images = image(height: height, width: width) + image(height: height, width: width).map { $0 * 0.5 + 7 }
            // A position-dependent "network": logit k = Σ pixel · (1 + y + k·x), per image.
            func classify(_ x: UnsafePointer<Float>, _ n: Int, _ h: Int, _ w: Int, _ out: UnsafeMutablePointer<Float>) {
                for i in 0..<n {
                    for k in 0..<classes {
                        var sum: Float = 0
                        for y in 0..<h { for c in 0..<w { sum += x[((i * h + y) * w + c) * 3] * Float(1 + y + k * c) } }
                        out[i * classes + k] = sum
                    }
                }
            }
            let tta = TestTimeAugmentation(viewCount: 8)!
            var mean = [Float](repeating: 0, count: count * classes), batches = 0
            images.withUnsafeBufferPointer { src in
                mean.withUnsafeMutableBufferPointer { out in
                    tta.meanLogits(images: src.baseAddress!, count: count, height: height, width: width, classes: classes,
                                   maxBatch: maxBatch, into: out.baseAddress!) {
                        XCTAssertLessThanOrEqual($1, maxBatch)
                        batches += 1
                        classify($0, $1, $2, $3, $4)
                    }
                }
            }
            XCTAssertEqual(batches, calls, "\(height)x\(width), at most \(maxBatch) per batch")
            var expected = [Float](repeating: 0, count: count * classes)
            for v in tta.views {
                var viewed = [Float](repeating: 0, count: images.count), logits = [Float](repeating: 0, count: count * classes)
                images.withUnsafeBufferPointer { TestTimeAugmentation.apply(v, images: $0.baseAddress!, count: count, height: height, width: width, into: &viewed) }
                let (h, w) = v.transpose ? (width, height) : (height, width)
                viewed.withUnsafeBufferPointer { classify($0.baseAddress!, count, h, w, &logits) }
                for i in expected.indices { expected[i] += logits[i] / 8 }
            }
            for i in expected.indices { XCTAssertEqual(mean[i], expected[i], accuracy: 1e-3 * abs(expected[i]), "\(height)x\(width) [\(i)]") }
            XCTAssertNotEqual(mean[0], mean[1], "the classes differ")
        }
    }
}
