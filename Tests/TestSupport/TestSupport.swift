import Foundation

/// Where the tests find their data: the repository (for `fixtures/`) and `../shared/reference` beside it,
/// located from this file's path so that tests run from any working directory.
public enum TestPaths {
    public static let repository: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }  // Tests/TestSupport/TestSupport.swift → repository
        return url
    }()
    public static let fixtures = repository.appendingPathComponent("fixtures")
    public static let reference = repository.deletingLastPathComponent().appendingPathComponent("shared/reference")
}

/// A raw little-endian float32 file.
public func readFloats(_ url: URL) throws -> [Float] {
    let data = try Data(contentsOf: url)
    return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
}

/// max |a − b| / max |b|, the relative error the issues' tolerances refer to; infinite when the counts differ or
/// either side holds NaN or infinities, so a broken result can never pass a tolerance.
public func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    guard a.count == b.count, (a + b).allSatisfy(\.isFinite) else { return .infinity }
    var diff: Float = 0, scale: Float = 0
    for i in 0..<a.count {
        diff = max(diff, abs(a[i] - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / max(scale, .leastNormalMagnitude)
}
