import ArgumentParser
import Foundation
import ResNetFormats
import ResNetSupport

/// `resnetkit export-onnx CKPT --out FILE [--opset N]`: a checkpoint as a standard eval-mode ONNX model.
struct ExportONNX: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-onnx",
        abstract: "Write a checkpoint as an ONNX model (BatchNorm folded, dynamic batch and image size).",
        discussion: "Input `input` [batch, 3, height, width], preprocessed as the checkpoint says; output `logits` [batch, classes].")

    @Argument(help: "A ResNetKit checkpoint (.safetensors), or any model file import-weights reads.")
    var checkpoint: String

    @Option(name: .customLong("out"), help: ArgumentHelp("The ONNX file to write.", valueName: "FILE"))
    var out: String

    @Option(name: .customLong("opset"), help: "ONNX opset version, \(ONNXExporter.supportedOpsets.lowerBound)…\(ONNXExporter.supportedOpsets.upperBound).")
    var opset: Int = ONNXExporter.defaultOpset

    @Flag(name: .customLong("quiet"), help: "Print nothing but errors.")
    var quiet = false

    @Flag(help: "Replace an existing output file.")
    var force = false

    func validate() throws {
        guard ONNXExporter.supportedOpsets.contains(opset) else {
            throw ValidationError("--opset must be between \(ONNXExporter.supportedOpsets.lowerBound) and \(ONNXExporter.supportedOpsets.upperBound)")
        }
    }

    func run() throws {
        Console.quiet = quiet
        let output = OutputGuard.Output(out, option: "--out", mayExist: force)
        try OutputGuard.check(outputs: [output], inputs: [OutputGuard.Input(checkpoint, role: "checkpoint")])
        let locks = try OutputGuard.lock([output])
        defer { locks.forEach { $0.release() } }
        let model = try ModelImporter.load(path: checkpoint).checkpoint
        try ONNXExporter.export(model, to: out, opset: opset)
        Console.info("wrote \(out) (ONNX opset \(opset), ResNet-18 width \(model.config.baseWidth), \(model.config.head.rawValue) head, \(model.config.numClasses) classes)")
    }
}
