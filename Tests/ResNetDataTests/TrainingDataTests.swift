import Foundation
import ResNetData
import ResNetModel
import XCTest

/// Augmentation geometry (hand-checked pixel positions) and the labels table.
final class TrainingDataTests: XCTestCase {
    /// A 5x5 image whose red channel is the pixel index (y·5 + x), green 100 + index, blue 200 − index.
    let image: [UInt8] = (0..<25).flatMap { (i: Int) -> [UInt8] in [UInt8(i), UInt8(100 + i), UInt8(200 - i)] }

    func apply(_ a: Augmentation, crop: Int, bgr: Bool = false) -> [Float] {
        var out = [Float](repeating: -1, count: crop * crop * 3)
        image.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                a.apply(src.baseAddress!, width: 5, height: 5, crop: crop, scale: [1, 1, 1], offset: [0, 0, 0], bgr: bgr,
                        into: dst.baseAddress!)
            }
        }
        return out
    }

    func red(_ out: [Float], crop: Int) -> [[Int]] {
        (0..<crop).map { y in (0..<crop).map { x in Int(out[(y * crop + x) * 3]) } }
    }

    func testIdentityIsTheCentreCrop() {
        // 5 → 3 starts at 1: rows 1…3, columns 1…3.
        XCTAssertEqual(red(apply(.identity, crop: 3), crop: 3), [[6, 7, 8], [11, 12, 13], [16, 17, 18]])
        let bgr = apply(.identity, crop: 3, bgr: true)
        XCTAssertEqual(Array(bgr[0..<3]), [194, 106, 6], "channels swapped for BGR")
    }

    func testFlipsMirrorTheImage() {
        let h = Augmentation(horizontalFlip: true, verticalFlip: false, angle: 0)
        XCTAssertEqual(red(apply(h, crop: 5), crop: 5)[0], [4, 3, 2, 1, 0])
        let v = Augmentation(horizontalFlip: false, verticalFlip: true, angle: 0)
        XCTAssertEqual(red(apply(v, crop: 5), crop: 5).map { $0[0] }, [20, 15, 10, 5, 0])
    }

    /// +90° is counter-clockwise (torchvision's sense): the right column becomes the top row.
    func testRotationIsCounterClockwiseWithZeroFill() {
        let quarter = red(apply(Augmentation(horizontalFlip: false, verticalFlip: false, angle: 90), crop: 5), crop: 5)
        XCTAssertEqual(quarter[0], [4, 9, 14, 19, 24])
        XCTAssertEqual(quarter.map { $0[0] }, [4, 3, 2, 1, 0])
        // At 45° the corners come from outside the image: filled with 0.
        let diagonal = apply(Augmentation(horizontalFlip: false, verticalFlip: false, angle: 45), crop: 5)
        XCTAssertEqual(Array(diagonal[0..<3]), [0, 0, 0])
        XCTAssertEqual(red(diagonal, crop: 5)[2][2], 12, "the centre stays")
    }

    func testLabelsMapToSortedClasses() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("labels-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let numeric = dir.appendingPathComponent("n.csv"), text = dir.appendingPathComponent("t.csv")
        try "id,label\na,10\nb,2\nc,2\n".write(to: numeric, atomically: true, encoding: .utf8)
        try "image,diagnosis\nx,tumor\ny,normal\n\"z,1\",normal\n".write(to: text, atomically: true, encoding: .utf8)
        let n = try LabelTable.load(path: numeric.path)
        XCTAssertEqual(n.classNames, ["2", "10"], "integer labels sort as numbers")
        XCTAssertEqual(n.labels, [1, 0, 0])
        let t = try LabelTable.load(path: text.path)
        XCTAssertEqual(t.ids, ["x", "y", "z,1"], "other column names, quoted id")
        XCTAssertEqual(t.columnNote, "\(text.path): no id,label header; using its first two columns 'image' and 'diagnosis' as id and label")
        XCTAssertNil(n.columnNote)
        XCTAssertEqual(t.classNames, ["normal", "tumor"])
        XCTAssertEqual(t.labels, [1, 0, 0])
        // A model's classes: names or indices.
        let given = try LabelTable.load(path: numeric.path, classNames: ["2", "10", "11"])
        XCTAssertEqual(given.labels, [1, 0, 0])
        XCTAssertThrowsError(try LabelTable.load(path: text.path, classNames: ["0", "1"])) { error in
            XCTAssertEqual("\(error)", "\(text.path): record 2: label tumor is not one of the classes 0, 1")
        }
    }
}
