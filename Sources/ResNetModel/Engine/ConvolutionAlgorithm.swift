/// How a convolution larger than 1x1 is computed: im2col + one GEMM, Winograd F(2x2, 3x3) (`WinogradConv`), or
/// one GEMM per kernel tap (`TapwiseConv`). All give PyTorch's results to float rounding; they differ in speed.
/// The inference plan and the training layers decide with the same rules.
public enum ConvolutionAlgorithm: String, CaseIterable, Sendable {
    /// Winograd where it pays for a lane's share of the batch (`WinogradConv.pays`), taps on maps so small
    /// that im2col would mostly multiply padding (`TapwiseConv.pays`), im2col elsewhere.
    case automatic
    /// im2col + GEMM everywhere.
    case im2col
    /// Winograd for every convolution it supports, however small; im2col for the rest.
    case winograd
    /// Tap by tap for every convolution larger than 1x1, however large its map.
    case tapwise

    /// Whether convolution `s` runs as Winograd on `laneInput`, the images one lane computes.
    func usesWinograd(_ s: ConvShape, laneInput: Geometry) -> Bool {
        guard WinogradConv.supports(s) else { return false }
        switch self {
        case .automatic: return WinogradConv.pays(s, laneInput: laneInput)
        case .im2col, .tapwise: return false
        case .winograd: return true
        }
    }

    /// Whether convolution `s` runs tap by tap on input of this size, when it does not run as Winograd.
    func usesTaps(_ s: ConvShape, input: Geometry) -> Bool {
        guard s.kernel > 1 else { return false }
        switch self {
        case .automatic: return TapwiseConv.pays(s, input: input)
        case .im2col, .winograd: return false
        case .tapwise: return true
        }
    }
}
