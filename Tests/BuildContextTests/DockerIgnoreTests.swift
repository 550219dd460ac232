import BuildContext
import Testing

@Suite("dockerignore rules")
struct DockerIgnoreTests {
    /// (rules, path, excluded?) — Docker's documented behaviour.
    static let cases: [(String, String, Bool)] = [
        ("*.log", "a.log", true),
        ("*.log", "dir/a.log", false),
        ("**/*.log", "dir/sub/a.log", true),
        ("**/*.log", "a.log", true),
        ("node_modules", "node_modules/pkg/index.js", true),
        ("node_modules", "src/node_modules", false),
        ("build/", "build/out/app", true),
        ("/secret.txt", "secret.txt", true),
        ("./secret.txt", "secret.txt", true),
        ("temp?", "temp1", true),
        ("temp?", "temp12", false),
        ("[a-c].txt", "b.txt", true),
        ("[a-c].txt", "d.txt", false),
        ("[!a-c].txt", "d.txt", true),
        ("*.md\n!README.md", "README.md", false),
        ("*.md\n!README.md", "CHANGES.md", true),
        ("docs\n!docs/keep.txt", "docs/keep.txt", false),
        ("docs\n!docs/keep.txt", "docs/other.txt", true),
        ("!README.md\n*.md", "README.md", true),
        ("# a comment\n\n   \n*.tmp", "x.tmp", true),
        ("# a comment", "# a comment", false),
        ("**", "anything/at/all", true),
        ("a/**/b", "a/b", true),
        ("a/**/b", "a/x/y/b", true),
        ("a/**/b", "a/x/y/c", false),
        ("dir/*", "dir/file", true),
        ("dir/*", "dir", false),
        ("*/temp*", "somedir/temporary.txt", true),
        ("*/*/temp*", "somedir/subdir/temporary.txt", true),
        ("\\*literal", "*literal", true),
        ("\\*literal", "xliteral", false),
        ("a.b", "aXb", false),
        ("  spaced.txt  ", "spaced.txt", true),
        ("x.txt\r", "x.txt", true),
    ]

    @Test("patterns match as Docker's do", arguments: cases)
    func matching(rules: String, path: String, excluded: Bool) throws {
        #expect(try DockerIgnore(parsing: rules).excludes(path) == excluded, "rules \(rules.debugDescription) on \(path)")
    }

    @Test("a bad pattern names its line")
    func badPattern() {
        #expect(throws: BuildContextError.self) { try DockerIgnore(parsing: "ok\n[unclosed") }
        do {
            _ = try DockerIgnore(parsing: "ok\n[unclosed")
        } catch let error as BuildContextError {
            #expect(error.code == "dockerignore_invalid")
            #expect(error.message.contains("line 2"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }
}
