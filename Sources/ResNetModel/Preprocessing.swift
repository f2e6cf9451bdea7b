/// How pixel values are scaled after dividing by the maximum sample value (255 for 8-bit images).
public enum Normalization: String, Codable, Sendable, CaseIterable {
    /// (x − mean) / std with ImageNet's statistics, as torchvision's pretrained weights expect.
    case imagenet
    /// x in [0, 1] as it comes (the seed notebook's `ToTensor` only).
    case none

    public static let imagenetMean: [Float] = [0.485, 0.456, 0.406]
    public static let imagenetStd: [Float] = [0.229, 0.224, 0.225]
}

/// Order of the colour channels fed to the network.
public enum ChannelOrder: String, Codable, Sendable, CaseIterable {
    case rgb
    /// OpenCV's order (`cv2.imread`), which the seed notebook trained on.
    case bgr
}

/// What the model expects of its input images; stored in checkpoints, overridable on the command line.
public struct Preprocessing: Codable, Equatable, Sendable {
    /// Side of the centre crop; 0 keeps the whole image.
    public var crop: Int
    public var normalization: Normalization
    public var channelOrder: ChannelOrder

    public init(crop: Int = 0, normalization: Normalization = .imagenet, channelOrder: ChannelOrder = .rgb) {
        self.crop = crop
        self.normalization = normalization
        self.channelOrder = channelOrder
    }

    /// Per-channel (scale, offset) so that value = raw/maxValue · scale + offset, in the network's channel order.
    public func affine(maxValue: Float) -> (scale: [Float], offset: [Float]) {
        var scale = [Float](repeating: 1 / maxValue, count: 3), offset = [Float](repeating: 0, count: 3)
        if normalization == .imagenet {
            for c in 0..<3 {
                let source = channelOrder == .rgb ? c : 2 - c
                scale[c] = 1 / (maxValue * Normalization.imagenetStd[source])
                offset[c] = -Normalization.imagenetMean[source] / Normalization.imagenetStd[source]
            }
        }
        return (scale, offset)
    }
}
