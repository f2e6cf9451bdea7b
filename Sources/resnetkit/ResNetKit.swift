import ArgumentParser

/// The root command: one subcommand per file in this folder.
struct ResNetKit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resnetkit",
        abstract: "Convert, fine-tune and run ResNet-18 image classifiers on folders of TIFF patches.",
        discussion: """
            Typical flow (the program is also installed as import-weights, fine-tune and batch-infer):
              resnetkit import-weights resnet18.onnx            → model.safetensors
              resnetkit fine-tune train --labels train_labels.csv  → finetuned.safetensors
              resnetkit batch-infer ./test --out preds.csv
            Set RESNETKIT_LOG=debug to see which OpenBLAS kernel runs.
            """,
        version: "0.1.0",
        subcommands: [ImportWeights.self, FineTune.self, BatchInfer.self, Evaluate.self, Inspect.self, ExportONNX.self,
                      FindLR.self, InferSlide.self, Explain.self, Quantize.self, System.self])

    /// Subcommands reachable through a link named after them.
    static let linkedSubcommands: Set<String> = ["import-weights", "batch-infer", "fine-tune"]
}
