/// The classifier on top of the backbone.
public enum HeadKind: String, Codable, Sendable, CaseIterable {
    /// torchvision's single `fc` layer: Linear(512, K).
    case linear
    /// The seed notebook's head: BatchNorm1d(512), Dropout, Linear(512, hidden), ReLU,
    /// BatchNorm1d(hidden), Dropout, Linear(hidden, K). Parameters are named `head.bn1.*`,
    /// `head.fc1.*`, `head.bn2.*`, `head.fc2.*`.
    case mlp
}

/// Everything that fixes the network's shape and arithmetic; stored in every checkpoint.
public struct ModelConfig: Codable, Equatable, Sendable {
    public var numClasses: Int
    public var head: HeadKind
    /// Width of the MLP head's hidden layer (the seed uses 256).
    public var hiddenUnits: Int
    /// Dropout probability in the MLP head (training only).
    public var dropout: Float
    /// Channels of the stem and layer1 (64 for ResNet-18; smaller widths make test fixtures small).
    /// Stages have baseWidth × 1, 2, 4, 8 channels.
    public var baseWidth: Int
    /// BatchNorm epsilon: 1e-5 in PyTorch, 1e-3 in Keras files (kept as the file says).
    public var batchNormEpsilon: Float
    /// The layers that pad TensorFlow's way (padding='same': by the input size, the extra pixel after) instead of
    /// PyTorch's: convolutions by their torchvision weight prefix (`conv1`, `layer2.0.conv1`,
    /// `layer2.0.downsample.0`) and `maxpool`. Empty for PyTorch models; Keras models built with padding='same'
    /// at stride 2 list those layers, so the network computes what Keras computes at any input size.
    public var samePadding: Set<String>

    /// The name `samePadding` uses for the stem's max pool.
    public static let maxPoolName = "maxpool"

    public init(numClasses: Int = 1000, head: HeadKind = .linear, hiddenUnits: Int = 256,
                dropout: Float = 0.5, baseWidth: Int = 64, batchNormEpsilon: Float = 1e-5, samePadding: Set<String> = []) {
        self.numClasses = numClasses
        self.head = head
        self.hiddenUnits = hiddenUnits
        self.dropout = dropout
        self.baseWidth = baseWidth
        self.batchNormEpsilon = batchNormEpsilon
        self.samePadding = samePadding
    }

    enum CodingKeys: String, CodingKey {
        case numClasses, head, hiddenUnits, dropout, baseWidth, batchNormEpsilon, samePadding
    }

    /// Checkpoints written before padding rules existed have no `samePadding`: PyTorch's padding throughout.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        numClasses = try c.decode(Int.self, forKey: .numClasses)
        head = try c.decode(HeadKind.self, forKey: .head)
        hiddenUnits = try c.decode(Int.self, forKey: .hiddenUnits)
        dropout = try c.decode(Float.self, forKey: .dropout)
        baseWidth = try c.decode(Int.self, forKey: .baseWidth)
        batchNormEpsilon = try c.decode(Float.self, forKey: .batchNormEpsilon)
        samePadding = try c.decodeIfPresent(Set<String>.self, forKey: .samePadding) ?? []
    }

    /// `samePadding` is written only when it lists a layer (sorted), so PyTorch models' files stay as before.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(numClasses, forKey: .numClasses)
        try c.encode(head, forKey: .head)
        try c.encode(hiddenUnits, forKey: .hiddenUnits)
        try c.encode(dropout, forKey: .dropout)
        try c.encode(baseWidth, forKey: .baseWidth)
        try c.encode(batchNormEpsilon, forKey: .batchNormEpsilon)
        if !samePadding.isEmpty { try c.encode(samePadding.sorted(), forKey: .samePadding) }
    }

    /// Channels of layer1…layer4.
    public var stageWidths: [Int] { [1, 2, 4, 8].map { $0 * baseWidth } }
    /// Features entering the head (512 for ResNet-18).
    public var featureWidth: Int { 8 * baseWidth }

    /// The smallest input side the network accepts (PyTorch raises below this: layer4 would be empty).
    public static let minimumInputSide = 32
}
