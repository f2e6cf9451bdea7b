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

    public init(numClasses: Int = 1000, head: HeadKind = .linear, hiddenUnits: Int = 256,
                dropout: Float = 0.5, baseWidth: Int = 64, batchNormEpsilon: Float = 1e-5) {
        self.numClasses = numClasses
        self.head = head
        self.hiddenUnits = hiddenUnits
        self.dropout = dropout
        self.baseWidth = baseWidth
        self.batchNormEpsilon = batchNormEpsilon
    }

    /// Channels of layer1…layer4.
    public var stageWidths: [Int] { [1, 2, 4, 8].map { $0 * baseWidth } }
    /// Features entering the head (512 for ResNet-18).
    public var featureWidth: Int { 8 * baseWidth }

    /// The smallest input side the network accepts (PyTorch raises below this: layer4 would be empty).
    public static let minimumInputSide = 32
}
