/// The seam between the commands and whatever computes the network: `InferencePlan` (fp32 on OpenBLAS, exact
/// against PyTorch) today, a reduced-precision backend (bf16 / int8 convolutions through oneDNN, with their own
/// blocked layouts from end to end) beside it. A backend owns its whole forward pass, not single convolutions:
/// oneDNN chooses layouts that only pay when they flow from one layer to the next.
public protocol InferenceEngine: AnyObject {
    var numClasses: Int { get }
    /// Length of the pooled feature vector (layer4's channels).
    var featureWidth: Int { get }
    /// Logits [count, numClasses] for NHWC images [count, height, width, 3], already preprocessed. Throws when a
    /// backend cannot serve the batch's shape (oneDNN builds its primitives per shape); the fp32 plan never does.
    func run(images: UnsafePointer<Float>, count: Int, height: Int, width: Int, logits: UnsafeMutablePointer<Float>) throws
    /// The pooled backbone features [count, featureWidth] the head reads.
    func features(images: UnsafePointer<Float>, count: Int, height: Int, width: Int, features: UnsafeMutablePointer<Float>) throws
}

extension InferencePlan: InferenceEngine {}
