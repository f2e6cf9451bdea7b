import ResNetData
import ResNetSupport
import XCTest

final class CSVTests: XCTestCase {
    func testParsesRFC4180QuotingAndCRLF() throws {
        let text = "id,label\r\n\"a,b\",1\r\n\"say \"\"hi\"\"\",0\r\n\"two\nlines\",1\r\nplain,\r\n\r\n"
        XCTAssertEqual(try CSV.parse(text, path: "t.csv"),
                       [["id", "label"], ["a,b", "1"], ["say \"hi\"", "0"], ["two\nlines", "1"], ["plain", ""]])
    }

    func testOddIDsRoundTrip() throws {
        let rows = [["id", "x"], ["comma,id", "1"], ["quote\"id", "2"], ["new\nline", "3"], ["crlf\r\nid", "4"],
                    ["ünïcødé ✓ 病理", "5"], ["", "6"], [" spaced ", "7"]]
        let text = rows.map(CSV.encodeRow).joined()
        XCTAssertEqual(CSV.encodeRow(["comma,id", "quote\"id"]), "\"comma,id\",\"quote\"\"id\"\n")
        XCTAssertEqual(try CSV.parse(text, path: "t.csv"), rows)
    }

    func testMalformedQuotingIsReportedWithTheLine() {
        XCTAssertThrowsError(try CSV.parse("id\n\"open\n", path: "t.csv")) {
            XCTAssertEqual("\($0)", "t.csv: line 2: a quoted field is never closed")
        }
        XCTAssertThrowsError(try CSV.parse("id\nab\"c\n", path: "t.csv")) {
            XCTAssertEqual("\($0)", "t.csv: line 2: a quote inside an unquoted field (quote the field and double the quote)")
        }
        XCTAssertThrowsError(try CSV.parse("\"a\"b,1\n", path: "t.csv")) {
            XCTAssertEqual("\($0)", "t.csv: line 1: text after a closing quote")
        }
    }
}
