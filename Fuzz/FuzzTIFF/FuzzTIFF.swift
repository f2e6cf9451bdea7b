import FuzzSupport
@testable import ResNetData

// TIFF: header checks and decoding through libtiff, with a small pixel budget so that each input is quick; then the
// same file as a whole-slide image (levels, blocks, a region at the far corner of each level), where blocks are
// small enough to keep each input quick.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTIFF(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    TIFFDecoder.pixelBudget = 1 << 16
    let path = FuzzInput.file(start, count)
    _ = try? TIFFDecoder.decode(path: path)
    if let slide = try? SlideReader(path: path) {
        for (index, level) in slide.levels.enumerated().prefix(3) where level.blockBytes <= 1 << 22 {
            let width = min(level.width, 64), height = min(level.height, 64)
            var pixels = [UInt8](repeating: 0, count: width * height * 3)
            _ = try? slide.read(level: index, x: level.width - width, y: level.height - height, width: width, height: height, into: &pixels)
        }
    }
    return 0
}

@_cdecl("FuzzTIFF_main")
public func fuzzTIFFMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzTIFF)
}
