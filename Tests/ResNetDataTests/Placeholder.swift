import XCTest
final class ResNetDataTestsPlaceholder: XCTestCase {}
