import Foundation
import ResNetFormats
import ResNetModel
import TestSupport
import XCTest

/// The files of `../shared/reference`.
enum Reference {
    static func path(_ name: String) -> String { TestPaths.reference.appendingPathComponent(name).path }

    static func floats(_ name: String) throws -> [Float] { try readFloats(TestPaths.reference.appendingPathComponent(name)) }

    static func checkpoint() throws -> Checkpoint { try Checkpoint.load(path: path("resnet18.safetensors")) }
}
