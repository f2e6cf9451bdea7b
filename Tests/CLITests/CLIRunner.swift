import Foundation
import TestSupport
import XCTest

/// Runs the built `resnetkit` binary (from the same build folder as the tests) and captures its output.
enum CLI {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// The products folder: the test bundle sits beside the executables (e.g. `.build/release`).
    static let productsDirectory: URL = {
        var url = URL(fileURLWithPath: CommandLine.arguments.first ?? "")
        while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("resnetkit").path) {
            url.deleteLastPathComponent()
        }
        return url
    }()

    /// The binary under test; RESNETKIT_CLI_BINARY runs the tests against another build (e.g. an older one).
    static var executable: URL {
        if let other = ProcessInfo.processInfo.environment["RESNETKIT_CLI_BINARY"] { return URL(fileURLWithPath: other) }
        return productsDirectory.appendingPathComponent("resnetkit")
    }

    /// The repository root (for fixtures) and `../shared/reference`.
    static let repository = TestPaths.repository
    static let reference = TestPaths.reference

    /// Runs `resnetkit arguments…` (or the binary under another name, through a symlink, when `programName` is set).
    @discardableResult
    static func run(_ arguments: [String], programName: String? = nil, environment: [String: String] = [:],
                    unsetting: [String] = [], currentDirectory: URL? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> Result {
        let process = Process()
        var binary = executable
        if let programName {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("resnetkit-links-\(getpid())")
            try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            binary = dir.appendingPathComponent(programName)
            try? FileManager.default.removeItem(at: binary)
            try FileManager.default.createSymbolicLink(at: binary, withDestinationURL: executable)
        }
        process.executableURL = binary
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (key, value) in environment { env[key] = value }
        for key in unsetting { env[key] = nil }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = currentDirectory }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Read both pipes before waiting so a chatty process cannot block on a full pipe.
        final class Box: @unchecked Sendable { var data = Data() }
        let outBox = Box()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { outBox.data = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        let outData = outBox.data
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self))
    }

    /// A fresh temporary folder, removed when the test ends.
    static func temporaryDirectory(_ test: XCTestCase) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("resnetkit-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }
}

/// The committed default fixtures (fixtures/images and the small default model), for the tests that run on them.
protocol UsesDefaultFixtures {}

extension UsesDefaultFixtures {
    static var fixtures: URL { CLI.repository.appendingPathComponent("fixtures") }
    static var images: URL { fixtures.appendingPathComponent("images") }
    static var model: String { fixtures.appendingPathComponent("default-model.safetensors").path }

    /// The fixture images' ids, sorted (the order batch-infer writes a small folder in).
    static var imageIDs: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: images.path)) ?? [])
            .filter { $0.hasSuffix(".tif") }.map { String($0.dropLast(4)) }.sorted()
    }

    /// Writes `dir/labels.csv` (id,label) with labels alternating over the sorted ids, class 0 and 1 written as
    /// `names`; returns its path.
    func writeAlternatingLabels(_ dir: URL, names: [String] = ["0", "1"]) throws -> String {
        let url = dir.appendingPathComponent("labels.csv")
        let rows = Self.imageIDs.enumerated().map { "\($0.element),\(names[$0.offset % 2])" }
        try (["id,label"] + rows).joined(separator: "\n").appending("\n").write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }
}
