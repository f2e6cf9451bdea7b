import Foundation
import ResNetFormats
import ResNetModel
import XCTest

/// Locates `../shared/reference` (beside the repository) and reads its raw float32 files.
enum Reference {
    static let directory: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }  // Tests/ResNetModelTests/ReferenceData.swift → repo
        return url.deletingLastPathComponent().appendingPathComponent("shared/reference")
    }()

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func floats(_ name: String) throws -> [Float] {
        let data = try Data(contentsOf: directory.appendingPathComponent(name))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    static func checkpoint() throws -> Checkpoint { try Checkpoint.load(path: path("resnet18.safetensors")) }
}

/// max |a − b| / max |b|: the relative error the issues' tolerances refer to.
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var diff: Float = 0, scale: Float = 0
    for i in 0..<a.count {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / max(scale, .leastNormalMagnitude)
}
