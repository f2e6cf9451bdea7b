import FuzzSupport
import Foundation
import ResNetData

// CSV: the RFC 4180 parser, the torn-record scan --resume uses, and a labels table.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCSV(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    _ = try? CSV.parse(String(decoding: bytes, as: UTF8.self), path: "fuzz")
    _ = AppendableCSV.completeRecordsLength(bytes)
    let path = FuzzInput.file(start, count)
    _ = try? LabelTable.load(path: path)
    _ = try? LabelTable.load(path: path, classNames: ["0", "1"])
    return 0
}

@_cdecl("FuzzCSV_main")
public func fuzzCSVMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzCSV)
}
