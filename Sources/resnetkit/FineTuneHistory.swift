import Foundation
import ResNetData
import ResNetSupport

/// The run's figures, step by step and epoch by epoch: the --history CSV and the --plot SVG.
struct HistoryLog {
    static let header = ["kind", "phase", "epoch", "step", "loss", "accuracy", "average_loss", "average_accuracy",
                         "val_loss", "val_accuracy", "val_auc"]
    let path: String?
    var rows: [[String]] = []
    var step = 0

    /// Reads back the rows of an interrupted run up to (phase index, epochs done) when resuming.
    init(path: String?, resumeAfter: (phase: Int, epoch: Int)?) throws {
        self.path = path
        guard let path, let resumeAfter, let data = FileManager.default.contents(atPath: path) else { return }
        let records = try CSV.parse(String(decoding: data, as: UTF8.self), path: path)
        // Histories written before the val_auc column (the header's last) get an empty one.
        guard let header = records.first, header == Self.header || header == Array(Self.header.dropLast()) else {
            throw FileError(path, "is not a fine-tune history (its header is not \(Self.header.joined(separator: ","))); left unchanged")
        }
        for var record in records.dropFirst() where record.count == header.count {
            if record.count < Self.header.count { record.append("") }
            guard let phase = Int(record[1]), let epoch = Int(record[2]) else {
                throw FileError(path, "not a fine-tune history (record \(record.prefix(3).joined(separator: ",")))")
            }
            let before = phase - 1 < resumeAfter.phase || (phase - 1 == resumeAfter.phase && epoch <= resumeAfter.epoch)
            if before { rows.append(record); step = max(step, Int(record[3]) ?? 0) }
        }
        let (phase, epoch) = (String(resumeAfter.phase + 1), String(resumeAfter.epoch))
        if resumeAfter.epoch > 0 && !rows.contains(where: { $0[0] == "epoch" && $0[1] == phase && $0[2] == epoch }) {
            throw FileError(path, "does not reach the checkpoint's epoch \(epoch) of phase \(phase) (written by another run?); use another --history, or --force to start afresh")
        }
    }

    static func f(_ v: Float) -> String { String(format: "%.6f", v) }

    mutating func step(phase: Int, epoch: Int, loss: Float, accuracy: Float, averageLoss: Float, averageAccuracy: Float) {
        step += 1
        rows.append(["step", String(phase), String(epoch), String(step), Self.f(loss), Self.f(accuracy),
                     Self.f(averageLoss), Self.f(averageAccuracy), "", "", ""])
    }

    mutating func epoch(phase: Int, epoch: Int, validation: ValidationFigures?) {
        rows.append(["epoch", String(phase), String(epoch), String(step), "", "", "", "",
                     validation.map { String(format: "%.6f", $0.loss) } ?? "",
                     validation.map { String(format: "%.6f", $0.accuracy) } ?? "",
                     validation?.rocAUC.map { String(format: "%.6f", $0) } ?? ""])
    }

    func write() throws {
        guard let path else { return }
        let text = ([Self.header] + rows).map(CSV.encodeRow).joined()
        try AtomicFile.write(Data(text.utf8), to: path)
    }

    /// Loss and accuracy against the global step: raw train (faint), train average, validation per epoch,
    /// a dotted line where fine-tuning starts.
    func plot() -> String {
        func series(_ kind: String, _ column: Int) -> [(x: Double, y: Double)] {
            rows.filter { $0[0] == kind }.compactMap { r in Double(r[column]).map { (Double(r[3]) ?? 0, $0) } }
        }
        let fineTuneStart = rows.first { $0[0] == "step" && $0[1] == "2" }.flatMap { Double($0[3]) }.map { $0 - 1 }
        let markers = fineTuneStart.map { [(x: $0, label: "fine-tuning")] } ?? []
        func panel(_ title: String, raw: Int, average: Int, valid: Int) -> SVGPlot {
            SVGPlot(title: title, xLabel: "step", yLabel: title, series: [
                .init(label: "train (raw)", points: series("step", raw), color: "#1f77b4", opacity: 0.25, lineWidth: 1),
                .init(label: "train (average)", points: series("step", average), color: "#1f77b4", lineWidth: 2),
                .init(label: "validation", points: series("epoch", valid), color: "#d62728", lineWidth: 2, markers: true),
            ], markers: markers)
        }
        return SVGPlot.document([panel("loss", raw: 4, average: 6, valid: 8), panel("accuracy", raw: 5, average: 7, valid: 9)])
    }
}
