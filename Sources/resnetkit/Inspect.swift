import ArgumentParser
import Foundation
import ResNetDNNL
import ResNetFormats
import ResNetModel
import ResNetSupport

/// `resnetkit inspect FILE`: what a model file holds and a torchinfo-like table of the network.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a model file's contents and a layer table (output shapes, parameters, mult-adds).",
        discussion: "Reads native checkpoints, ONNX and HDF5 files (told apart by content, not extension).")

    @Argument(help: "A checkpoint (.safetensors), an ONNX model or an HDF5 weights file.")
    var file: String

    @Option(name: .customLong("input-size"), help: ArgumentHelp("Input shape for the table, NxCxHxW.", valueName: "NxCxHxW"))
    var inputSize: String?

    func run() throws {
        let imported = try ModelImporter.load(path: file)
        let checkpoint = imported.checkpoint
        let config = checkpoint.config
        let pre = checkpoint.preprocessing
        var shape = [1, 3, pre.crop > 0 ? pre.crop : 224, pre.crop > 0 ? pre.crop : 224]
        if let inputSize {
            let parts = inputSize.lowercased().split(separator: "x").compactMap { Int($0) }
            guard parts.count == 4, parts[0] > 0, parts[1] == 3, parts[2] >= ModelConfig.minimumInputSide,
                  parts[3] >= ModelConfig.minimumInputSide, Limits.inputBatch.contains(parts[0]),
                  Limits.inputSide.contains(parts[2]), Limits.inputSide.contains(parts[3]) else {
                throw ValidationError("--input-size must look like 16x3x49x49 (3 channels, batch up to \(Limits.inputBatch.upperBound), sides \(ModelConfig.minimumInputSide)…\(Limits.inputSide.upperBound))")
            }
            // Every layer's mult-adds are at most batch·H·W·(9·featureWidth²), and there are fewer than 32 layers.
            guard Limits.product([parts[0], parts[2], parts[3], 9 * config.featureWidth, config.featureWidth, 32]) != nil else {
                throw ValidationError("--input-size \(inputSize) is too large to count mult-adds for this model")
            }
            shape = parts
        }
        print("File:          \(file)")
        let producer = imported.producer.flatMap { $0.isEmpty ? nil : ", produced by \($0)" } ?? ""
        print("Format:        \(imported.sourceFormat)\(producer)")
        print("Architecture:  ResNet-18, base width \(config.baseWidth), \(config.head.rawValue) head, \(config.numClasses) classes")
        let names = checkpoint.classNames
        print("Classes:       \(names.count <= 10 ? names.joined(separator: ", ") : names.prefix(10).joined(separator: ", ") + ", …")")
        print("Preprocessing: crop \(pre.crop == 0 ? "none" : String(pre.crop)), normalize \(pre.normalization.rawValue), \(pre.channelOrder.rawValue)")
        if imported.batchNormFolded { print("BatchNorm:     folded into the convolutions in the file") }
        for note in imported.notes { print("Note:          \(note)") }
        if !checkpoint.provenance.sourceSHA256.isEmpty && imported.sourceFormat == "safetensors" {
            print("Provenance:    \(checkpoint.provenance.producer) from \(checkpoint.provenance.source) (sha256 \(checkpoint.provenance.sourceSHA256.prefix(16))…)")
        }
        for line in Self.history(checkpoint.extra) { print(line) }
        print("")
        print(Self.table(checkpoint.architecture.summary(batch: shape[0], height: shape[2], width: shape[3]),
                         architecture: checkpoint.architecture))
    }

    /// What the checkpoint's metadata says of how it was made: fine-tune's run (its arithmetic, how far it got,
    /// which epoch's weights it holds, the loss's class weights) and int8 calibration. A record that does not
    /// decode is named, not trusted.
    static func history(_ extra: [String: String]) -> [String] {
        var lines: [String] = []
        if let text = extra[FineTune.resumeKey] {
            // Checkpoints from before bf16 training record no precision: they are fp32.
            let used = (extra[FineTune.precisionKey] ?? "fp32").split(separator: ",", omittingEmptySubsequences: false)
            let precision = switch used {
            case ["fp32"]: "fp32"
            case ["bf16"]: "bf16 (convolutions in bf16, weights stored fp32)"
            case _ where used.count > 1 && used.allSatisfy({ $0 == "fp32" || $0 == "bf16" }):
                "\(used.joined(separator: ", then ")) (--precision changed at a --resume; weights stored fp32)"
            default: "an unknown arithmetic ('\(Self.printable(extra[FineTune.precisionKey] ?? ""))')"
            }
            if let run = try? JSONDecoder().decode(FineTune.ResumeState.self, from: Data(text.utf8)) {
                let progress = run.finished ? "finished after phase \(run.phase + 1) epoch \(run.epoch)"
                    : "stopped after phase \(run.phase + 1) epoch \(run.epoch) (fine-tune --resume continues it)"
                lines.append("Training:      fine-tune in \(precision); \(progress)")
            } else {
                lines.append("Training:      fine-tune in \(precision); its progress record (\(FineTune.resumeKey)) is unreadable")
            }
        }
        if let text = extra[FineTune.monitorKey],
           let record = try? JSONDecoder().decode(FineTune.MonitorRecord.self, from: Data(text.utf8)), record.phase > 0 {
            let value = record.value.map { String(format: ", %@ %.4f", record.monitor.rawValue, $0) } ?? ""
            lines.append("Weights:       phase \(record.phase) epoch \(record.epoch)\(value) (--keep \(Self.printable(record.keep)))")
        }
        if let text = extra[FineTune.classWeightsKey] {
            let weights = text.split(separator: ",", omittingEmptySubsequences: false).map { Float($0) }
            lines.append(weights.allSatisfy { $0 != nil }
                ? "Class weights: \(weights.map { "\($0!)" }.joined(separator: ", ")) (training loss)"
                : "Class weights: unreadable (\(FineTune.classWeightsKey))")
        }
        if let text = extra[ActivationScales.metadataKey] {
            if let scales = try? ActivationScales(json: text) {
                lines.append("int8 ranges:   \(scales.maxima.count) layers, \(Self.printable(scales.method)) (--precision int8 runs with them)")
            } else {
                lines.append("int8 ranges:   unreadable (\(ActivationScales.metadataKey)); rerun `resnetkit quantize`")
            }
        }
        return lines
    }

    /// A string from a file's metadata as one short line: control characters dropped, at most 120 characters.
    static func printable(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.filter { !CharacterSet.controlCharacters.contains($0) }.prefix(120)))
    }

    static func table(_ rows: [LayerSummary], architecture: Architecture) -> String {
        let grouped = Console.grouped
        func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count) }
        let rule = String(repeating: "=", count: 86)
        var lines = [rule, pad("Layer (type)", 44) + pad("Output Shape", 26) + "Param #", rule]
        for row in rows {
            let label = String(repeating: "  ", count: row.depth) + "\(row.name) (\(row.type))"
            let params = row.parameters == 0 ? "--" : grouped(row.parameters)
            lines.append(pad(label, 44) + pad(describe(shape: row.outputShape), 26) + params)
        }
        let total = architecture.trainableParameterCount
        let multAdds = rows.filter { $0.depth == 0 }.reduce(0) { $0 + $1.multAdds }
        lines += [rule, "Total params: \(grouped(total))", "Trainable params: \(grouped(total))",
                  "Non-trainable params: 0", String(format: "Total mult-adds (G): %.2f", Double(multAdds) / 1e9), rule]
        return lines.joined(separator: "\n")
    }
}
