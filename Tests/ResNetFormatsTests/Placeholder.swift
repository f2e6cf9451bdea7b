import XCTest
final class ResNetFormatsTestsPlaceholder: XCTestCase {}
