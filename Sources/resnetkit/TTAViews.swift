import ArgumentParser

/// `--tta 1|2|4|8` of batch-infer and evaluate.
enum TTAViews: Int, ExpressibleByArgument, CaseIterable {
    case one = 1, two = 2, four = 4, eight = 8

    static let help = ArgumentHelp(
        "Test-time augmentation: average the logits of N views of each (cropped) image: 1 none, 2 + horizontal flip, "
            + "4 + vertical flip and 180° rotation, 8 all four rotations each also flipped. The views run batched "
            + "(max(--batch-size, 64) images per batch); costs N times the work.",
        valueName: "1|2|4|8")
}
